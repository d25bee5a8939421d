"""Signed notes and checkpoints: the published golang.org/x/mod/sumdb/note example, round
trips, tampering, and strict parsing of everything malformed."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from medledger.ledger.note import (
    MAX_SIGNATURES,
    Checkpoint,
    NoteError,
    NoteSigner,
    NoteVerifier,
    checkpoint_body,
    key_hash,
    open_checkpoint,
    parse_checkpoint,
    signer_key,
    verifier_key,
)

# The example key pair and note of golang.org/x/mod/sumdb/note (package doc and note_test.go).
# Ed25519 signatures are deterministic, so signing TEXT must reproduce NOTE byte for byte.
VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
TEXT = b"If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
PETER_LINE = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
ENOCH_LINE = "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
NOTE = TEXT + b"\n" + PETER_LINE.encode()

# The example checkpoint body of c2sp.org/tlog-checkpoint.
SOFA = b"example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
ROOT = bytes(range(32))


def _peter_public_key() -> bytes:
    return base64.b64decode(VKEY.split("+", 2)[2])[1:]


# --- known answers ------------------------------------------------------------------------


def test_published_signer_key_reproduces_the_published_note() -> None:
    signer = NoteSigner.from_signer_key(SKEY)
    assert signer.name == "PeterNeumann"
    assert signer.key_hash.hex() == "c74f20a3"
    assert signer.verifier_key == VKEY
    assert signer.signer_key == SKEY
    assert signer.sign(TEXT) == NOTE


def test_published_verifier_key_opens_the_published_note() -> None:
    verifier = NoteVerifier.from_verifier_key(VKEY)
    assert (verifier.name, verifier.public_key_bytes) == ("PeterNeumann", _peter_public_key())
    assert verifier.verify(NOTE) == TEXT


def test_key_texts_from_raw_keys_match_the_published_ones() -> None:
    public_key = _peter_public_key()
    seed = base64.b64decode(SKEY.split("+", 4)[4])[1:]
    assert key_hash("PeterNeumann", public_key) == bytes.fromhex("c74f20a3")
    assert verifier_key("PeterNeumann", public_key) == VKEY
    assert signer_key("PeterNeumann", seed) == SKEY


def test_signatures_by_other_keys_are_ignored() -> None:
    # The doubly-signed example of the Go package documentation: EnochRoot's key is unknown here.
    verifier = NoteVerifier.from_verifier_key(VKEY)
    assert verifier.verify(NOTE + ENOCH_LINE.encode()) == TEXT
    assert verifier.verify(TEXT + b"\n" + (ENOCH_LINE + PETER_LINE).encode()) == TEXT
    with pytest.raises(NoteError, match="no signature by the trusted key"):
        verifier.verify(TEXT + b"\n" + ENOCH_LINE.encode())


def test_published_checkpoint_body_parses_and_round_trips() -> None:
    checkpoint = parse_checkpoint(SOFA)
    assert checkpoint == Checkpoint(
        "example.com/behind-the-sofa", 20852163, base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    )
    assert checkpoint_body(checkpoint) == SOFA


# --- round trips and tampering ------------------------------------------------------------


def test_sign_verify_round_trip() -> None:
    signer = NoteSigner.generate("medledger.example/log")
    verifier = NoteVerifier.from_verifier_key(signer.verifier_key)
    body = checkpoint_body(Checkpoint("medledger.example/log", 7, ROOT))
    note = signer.sign(body)
    assert note.startswith(body + b"\n\xe2\x80\x94 medledger.example/log ")
    assert verifier.verify(note) == body
    assert open_checkpoint(note, verifier) == Checkpoint("medledger.example/log", 7, ROOT)
    assert open_checkpoint(note, verifier, origin="medledger.example/log").size == 7
    assert NoteSigner.from_signer_key(signer.signer_key + "\n").verifier_key == signer.verifier_key


def test_verifier_key_format() -> None:
    signer = NoteSigner.generate("medledger.example/log")
    name, hash_hex, key_b64 = signer.verifier_key.split("+", 2)
    assert name == "medledger.example/log"
    assert hash_hex == key_hash(name, signer.public_key_bytes).hex() == signer.key_hash.hex()
    assert len(hash_hex) == 8 and hash_hex == hash_hex.lower()
    assert base64.b64decode(key_b64, validate=True) == b"\x01" + signer.public_key_bytes
    assert signer.signer_key.startswith(f"PRIVATE+KEY+{name}+{hash_hex}+")


def test_tampered_body_is_rejected() -> None:
    verifier = NoteVerifier.from_verifier_key(VKEY)
    with pytest.raises(NoteError, match="does not verify"):
        verifier.verify(NOTE.replace(b"cryptography", b"cryptographY"))


def test_tampered_signature_is_rejected() -> None:
    verifier = NoteVerifier.from_verifier_key(VKEY)
    raw = bytearray(base64.b64decode(PETER_LINE.split(" ")[2]))
    raw[10] ^= 0x01
    forged = TEXT + b"\n" + f"— PeterNeumann {base64.b64encode(bytes(raw)).decode()}\n".encode()
    with pytest.raises(NoteError, match="does not verify"):
        verifier.verify(forged)
    # A failing signature by the trusted key spoils the note even next to a good one.
    with pytest.raises(NoteError, match="does not verify"):
        verifier.verify(forged + PETER_LINE.encode())


def test_other_keys_are_not_trusted() -> None:
    note = NoteSigner.generate("medledger.example/log").sign(SOFA)
    impostor = NoteSigner.generate("medledger.example/log")  # same name, another key
    with pytest.raises(NoteError, match="no signature by the trusted key"):
        NoteVerifier.from_verifier_key(impostor.verifier_key).verify(note)
    with pytest.raises(NoteError):
        open_checkpoint(note, NoteVerifier.from_verifier_key(VKEY))


def test_open_checkpoint_checks_origin_and_body() -> None:
    signer = NoteSigner.from_signer_key(SKEY)
    verifier = NoteVerifier.from_verifier_key(VKEY)
    with pytest.raises(NoteError, match="another log"):
        open_checkpoint(signer.sign(SOFA), verifier, origin="medledger.example/log")
    with pytest.raises(NoteError, match="size"):
        open_checkpoint(NOTE, verifier)  # validly signed, but not a checkpoint


@settings(max_examples=60)
@given(data=st.data())
def test_any_change_to_a_signed_body_is_rejected(data: st.DataObject) -> None:
    verifier = NoteVerifier.from_verifier_key(VKEY)
    position = data.draw(st.integers(0, len(TEXT) - 1), label="position")
    value = data.draw(st.integers(0, 255).filter(lambda b: b != NOTE[position]), label="byte")
    with pytest.raises(NoteError):
        verifier.verify(NOTE[:position] + bytes([value]) + NOTE[position + 1 :])


LINE_TEXT = st.text(st.characters(min_codepoint=0x20, exclude_categories=["Cs"]), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(
    origin=LINE_TEXT,
    size=st.integers(0, 2**64 - 1),
    root=st.binary(min_size=32, max_size=32),
    extensions=st.lists(LINE_TEXT, max_size=3).map(tuple),
)
def test_checkpoint_round_trip(origin: str, size: int, root: bytes, extensions: tuple[str, ...]) -> None:
    checkpoint = Checkpoint(origin, size, root, extensions)
    body = checkpoint_body(checkpoint)
    assert parse_checkpoint(body) == checkpoint
    signer = NoteSigner.from_signer_key(SKEY)
    assert open_checkpoint(signer.sign(body), NoteVerifier.from_verifier_key(VKEY)) == checkpoint


# --- strict parsing -----------------------------------------------------------------------

ROOT_B64 = base64.b64encode(ROOT).decode()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(f"o\n1\n{ROOT_B64}".encode(), id="no final newline"),
        pytest.param(b"o\n1\n", id="no root line"),
        pytest.param(b"", id="empty"),
        pytest.param(f"\n1\n{ROOT_B64}\n".encode(), id="empty origin"),
        pytest.param(f"o\n1\n{ROOT_B64}\n\n".encode(), id="empty extension line"),
        pytest.param(f"o\r\n1\r\n{ROOT_B64}\r\n".encode(), id="CRLF"),
        pytest.param(f"o\t\n1\n{ROOT_B64}\n".encode(), id="control character"),
        pytest.param(b"o\xff\n1\n" + ROOT_B64.encode() + b"\n", id="invalid UTF-8"),
        *(
            pytest.param(f"o\n{size}\n{ROOT_B64}\n".encode(), id=f"size {size[:12]!r}")
            for size in ["", "01", "00", "-1", "+1", " 1", "1 ", "1_0", "0x10", "1e3", "\u0661", "\uff11",
                         str(2**64), "9" * 30, "9" * 5000]
        ),
        pytest.param(b"o\n1\n!!!!\n", id="root not base64"),
        pytest.param(f"o\n1\n{ROOT_B64.rstrip('=')}\n".encode(), id="root without padding"),
        pytest.param(f"o\n1\n{ROOT_B64[:-2]}R=\n".encode(), id="root with non-zero padding bits"),
        pytest.param(f"o\n1\n {ROOT_B64}\n".encode(), id="root with a space"),
        pytest.param(f"o\n1\n{base64.b64encode(ROOT[:31]).decode()}\n".encode(), id="31-byte root"),
        pytest.param(f"o\n1\n{base64.b64encode(ROOT + b'x').decode()}\n".encode(), id="33-byte root"),
        pytest.param(b"o\n1\n\n", id="empty root"),
    ],
)
def test_parse_checkpoint_rejects_malformed_bodies(body: bytes) -> None:
    with pytest.raises(NoteError):
        parse_checkpoint(body)


def test_parse_checkpoint_keeps_extension_lines() -> None:
    body = f"o\n0\n{ROOT_B64}\nfirst extension\nsecond\n".encode()
    assert parse_checkpoint(body) == Checkpoint("o", 0, ROOT, ("first extension", "second"))
    assert checkpoint_body(parse_checkpoint(body)) == body


@pytest.mark.parametrize(
    "fields",
    [("", 1, ROOT, ()), ("o\nx", 1, ROOT, ()), ("o", -1, ROOT, ()), ("o", 2**64, ROOT, ()),
     ("o", 1, ROOT[:31], ()), ("o", 1, ROOT, ("",)), ("o", 1, ROOT, ("a\nb",))],
    ids=["empty origin", "newline in origin", "negative size", "size beyond uint64", "short root",
         "empty extension", "newline in extension"],
)
def test_checkpoint_rejects_what_it_cannot_write(fields: tuple[str, int, bytes, tuple[str, ...]]) -> None:
    with pytest.raises(NoteError):
        Checkpoint(*fields)


@pytest.mark.parametrize(
    "note",
    [
        pytest.param(TEXT + PETER_LINE.encode(), id="no blank line"),
        pytest.param(NOTE[:-1], id="no final newline"),
        pytest.param(TEXT + b"\n", id="no signature lines"),
        pytest.param(TEXT + b"\n" + PETER_LINE.replace("—", "-").encode(), id="hyphen for em dash"),
        pytest.param(TEXT + b"\n" + PETER_LINE.replace("— ", "—").encode(), id="no space after em dash"),
        pytest.param(TEXT + b"\n" + PETER_LINE.replace("Peter", "Peter ").encode(), id="space in name"),
        pytest.param(TEXT + b"\n" + PETER_LINE.replace("x08go", "x08g!").encode(), id="bad base64"),
        pytest.param(TEXT + b"\n" + PETER_LINE[:-2].encode() + b"\n", id="truncated base64"),
        pytest.param(TEXT + b"\n\xe2\x80\x94 PeterNeumann x08gow==\n", id="key hash without signature"),
        pytest.param(TEXT + b"\n\xe2\x80\x94 PeterNeumann x08gow8=\n", id="one-byte signature"),
        pytest.param(TEXT + b"\n\xe2\x80\x94 PeterNeumann\n", id="no signature"),
        pytest.param(TEXT + b"\n\xe2\x80\x94  x08go/ZJ\n", id="empty name"),
        pytest.param(NOTE + b"\n", id="trailing blank line"),
        pytest.param(b"\xff" + NOTE, id="invalid UTF-8"),
        pytest.param(NOTE.replace(b"If you", b"If\tyou"), id="tab"),
        pytest.param(NOTE.replace(b"problem,\n", b"problem,\r\n"), id="carriage return"),
        pytest.param(NOTE + ENOCH_LINE.encode() * MAX_SIGNATURES, id="too many signatures"),
    ],
)
def test_malformed_notes_are_rejected(note: bytes) -> None:
    with pytest.raises(NoteError):
        NoteVerifier.from_verifier_key(VKEY).verify(note)


def test_up_to_the_signature_limit_is_accepted() -> None:
    note = NOTE + ENOCH_LINE.encode() * (MAX_SIGNATURES - 1)
    assert NoteVerifier.from_verifier_key(VKEY).verify(note) == TEXT


@pytest.mark.parametrize(
    "body", [b"no final newline", b"", b"tab\there\n", b"\xff\n", b"carriage\r\n"], ids=repr
)
def test_sign_rejects_what_is_not_note_text(body: bytes) -> None:
    with pytest.raises(NoteError):
        NoteSigner.from_signer_key(SKEY).sign(body)


@pytest.mark.parametrize("name", ["", "a b", "a+b", "a\tb", "a\nb", "a\u00a0b", "a\u2003b", "a\x00b"], ids=repr)
def test_key_names_without_spaces_pluses_or_controls(name: str) -> None:
    key = Ed25519PrivateKey.generate()
    with pytest.raises(NoteError):
        NoteSigner(name, key)
    with pytest.raises(NoteError):
        NoteVerifier(name, key.public_key().public_bytes_raw())
    with pytest.raises(NoteError):
        verifier_key(name, key.public_key().public_bytes_raw())


def test_every_mangled_verifier_key_is_rejected() -> None:
    """As in the Go package's tests: every proper substring and every one-character bump fails."""
    for start in range(len(VKEY)):
        for end in range(start + 1, len(VKEY) + 1):
            if (start, end) != (0, len(VKEY)):
                with pytest.raises(NoteError):
                    NoteVerifier.from_verifier_key(VKEY[start:end])
    for i in range(len(VKEY)):
        with pytest.raises(NoteError):
            NoteVerifier.from_verifier_key(VKEY[:i] + chr(ord(VKEY[i]) + 1) + VKEY[i + 1 :])


@pytest.mark.parametrize(
    "text",
    [
        SKEY.removeprefix("PRIVATE+KEY+"),  # a verifier-key shaped text
        SKEY.replace("PRIVATE+KEY", "private+key"),
        SKEY.replace("c74f20a3", "c74f20a4"),  # wrong hash
        SKEY.replace("c74f20a3", "c74f20a"),
        SKEY.replace("+AYEK", "+AoEK"),  # algorithm byte 0x02
        SKEY[:-4],  # short seed
        VKEY,
    ],
    ids=["no prefix", "lowercase prefix", "wrong hash", "short hash", "unknown algorithm", "short seed", "verifier key"],
)
def test_malformed_signer_keys_are_rejected(text: str) -> None:
    with pytest.raises(NoteError):
        NoteSigner.from_signer_key(text)


def test_errors_carry_the_values_they_are_about() -> None:
    with pytest.raises(NoteError) as raised:
        NoteVerifier.from_verifier_key(VKEY.replace("c74f20a3", "c74f20a4"))
    assert raised.value.facts == {"claimed": "c74f20a4", "computed": "c74f20a3"}
    with pytest.raises(NoteError) as raised:
        parse_checkpoint(b"o\n01\n" + ROOT_B64.encode() + b"\n")
    assert raised.value.facts == {"size": "01"}
