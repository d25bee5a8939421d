"""C2SP tlog-checkpoint bodies in C2SP signed-notes with Ed25519 keys, with no I/O.

Formats (c2sp.org/signed-note, c2sp.org/tlog-checkpoint, and the key texts of
golang.org/x/mod/sumdb/note), so that existing witnesses and tools can check our checkpoints:

- checkpoint body: ``origin\\n`` ``size\\n`` ``base64(root)\\n`` then extension lines, each ``\\n``-ended;
- signed note: body, a blank line, then lines ``— <key name> <base64(key hash || signature)>\\n``;
- key hash: ``SHA-256(name || 0x0A || 0x01 || public key)[:4]``;
- verifier key: ``<name>+<8 hex key hash>+<base64(0x01 || public key)>``;
- signer key: ``PRIVATE+KEY+<name>+<8 hex key hash>+<base64(0x01 || 32-byte seed)>``.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from hashlib import sha256

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ED25519 = 0x01
"""Signature type byte for Ed25519 in key hashes and key texts."""
MAX_SIGNATURES = 100
"""More signature lines than this make a note malformed (the spec asks verifiers for a limit >= 16)."""
ROOT_SIZE = 32
MAX_TREE_SIZE = 2**64 - 1

_SIGNATURE_PREFIX = "\u2014 "  # EM DASH, SPACE
_PRIVATE_PREFIX = "PRIVATE+KEY+"
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
_TREE_SIZE = re.compile(r"0|[1-9][0-9]*")
_KEY_HASH_HEX = re.compile(r"[0-9a-fA-F]{8}")


class NoteError(ValueError):
    """A malformed note, checkpoint or key text, or a note without a valid trusted signature.

    ``reason`` says what is wrong; ``facts`` holds the values it is about.
    """

    def __init__(self, reason: str, **facts: object) -> None:
        self.reason = reason
        self.facts = facts
        detail = ", ".join(f"{key}={value!r}" for key, value in facts.items())
        super().__init__(f"{reason} ({detail})" if detail else reason)


def _check_name(name: str) -> None:
    """Key names are non-empty, without Unicode spaces, '+' or control characters."""
    if not name or "+" in name or any(c.isspace() for c in name) or _CONTROL.search(name):
        raise NoteError("key name must be non-empty, without spaces, '+' or control characters", name=name)


def _note_text(data: bytes) -> str:
    """Decode note text: UTF-8, no control characters but newline, ending in a newline."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise NoteError("note is not valid UTF-8", position=error.start) from None
    control = _CONTROL.search(text)
    if control is not None:
        raise NoteError("note contains a control character", position=control.start())
    if not text.endswith("\n"):
        raise NoteError("note text must end in a newline")
    return text


def _b64decode(text: str, *, canonical: bool) -> bytes:
    """Standard padded base64; ``canonical`` also rejects non-zero padding bits."""
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise NoteError("invalid base64", text=text) from None
    if canonical and base64.b64encode(raw).decode("ascii") != text:
        raise NoteError("non-canonical base64", text=text)
    return raw


def key_hash(name: str, public_key: bytes) -> bytes:
    """The 4-byte key ID naming an Ed25519 key in signature lines and key texts."""
    if len(public_key) != 32:
        raise NoteError("Ed25519 public keys are 32 bytes", length=len(public_key))
    return sha256(name.encode("utf-8") + b"\n" + bytes([ED25519]) + public_key).digest()[:4]


def verifier_key(name: str, public_key: bytes) -> str:
    """The public verifier-key text that auditors and witnesses configure."""
    _check_name(name)
    encoded = base64.b64encode(bytes([ED25519]) + public_key).decode("ascii")
    return f"{name}+{key_hash(name, public_key).hex()}+{encoded}"


def signer_key(name: str, private_key_raw: bytes) -> str:
    """The secret signer-key text for the key file; ``private_key_raw`` is the 32-byte seed."""
    if len(private_key_raw) != 32:
        raise NoteError("Ed25519 private keys are 32-byte seeds", length=len(private_key_raw))
    _check_name(name)
    public_key = Ed25519PrivateKey.from_private_bytes(private_key_raw).public_key().public_bytes_raw()
    encoded = base64.b64encode(bytes([ED25519]) + private_key_raw).decode("ascii")
    return f"{_PRIVATE_PREFIX}{name}+{key_hash(name, public_key).hex()}+{encoded}"


def _parse_key_text(text: str) -> tuple[str, bytes, bytes]:
    """Split ``<name>+<hex hash>+<base64(0x01 || key)>`` into name, hash and 32 key bytes."""
    parts = text.split("+", 2)
    if len(parts) != 3 or not _KEY_HASH_HEX.fullmatch(parts[1]):
        raise NoteError("key text must be <name>+<8 hex digits>+<base64 key>")
    name, hash_hex, key_b64 = parts
    _check_name(name)
    key = _b64decode(key_b64, canonical=True)
    if not key or key[0] != ED25519:
        raise NoteError("unknown key algorithm", algorithm=key[0] if key else None)
    if len(key) != 33:
        raise NoteError("Ed25519 keys are 32 bytes", length=len(key) - 1)
    return name, bytes.fromhex(hash_hex), key[1:]


def _check_key_hash(name: str, claimed: bytes, public_key: bytes) -> None:
    computed = key_hash(name, public_key)
    if claimed != computed:
        raise NoteError("key hash does not match the key", claimed=claimed.hex(), computed=computed.hex())


class NoteSigner:
    """Signs note texts with one named Ed25519 key."""

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        _check_name(name)
        self._private_key = private_key
        self.name = name
        self.public_key_bytes = private_key.public_key().public_bytes_raw()
        self.key_hash = key_hash(name, self.public_key_bytes)
        self.verifier_key = verifier_key(name, self.public_key_bytes)

    def __repr__(self) -> str:
        return f"NoteSigner({self.name}+{self.key_hash.hex()})"

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        """A signer with a fresh random key."""
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_signer_key(cls, text: str) -> NoteSigner:
        """Load a ``PRIVATE+KEY+...`` text (surrounding whitespace, e.g. a file's newline, is ignored)."""
        text = text.strip()
        if not text.startswith(_PRIVATE_PREFIX):
            raise NoteError("signer key must start with PRIVATE+KEY+")
        name, claimed, seed = _parse_key_text(text[len(_PRIVATE_PREFIX) :])
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(seed))
        _check_key_hash(name, claimed, signer.public_key_bytes)
        return signer

    @property
    def signer_key(self) -> str:
        """The secret signer-key text of this signer, for its key file."""
        return signer_key(self.name, self._private_key.private_bytes_raw())

    def sign_raw(self, message: bytes) -> bytes:
        """A bare Ed25519 signature of ``message``, for other formats that use
        this key text (signed event envelopes); the caller domain-separates."""
        return self._private_key.sign(message)

    def sign(self, body: bytes) -> bytes:
        """The whole signed note: ``body``, a blank line and this key's signature line.

        Precondition: ``body`` is note text (UTF-8, no control characters but newline,
        ending in a newline), else NoteError.
        """
        _note_text(body)
        signature = base64.b64encode(self.key_hash + self._private_key.sign(body)).decode("ascii")
        return body + f"\n{_SIGNATURE_PREFIX}{self.name} {signature}\n".encode("utf-8")


@dataclass(frozen=True)
class _SignatureLine:
    name: str
    key_hash: bytes
    signature: bytes


def _split_note(note: bytes) -> tuple[bytes, list[_SignatureLine]]:
    """Separate a signed note into its text and parsed signature lines (none verified)."""
    _note_text(note)
    split = note.rfind(b"\n\n")
    if split < 0:
        raise NoteError("signed note has no blank line before its signatures")
    body, block = note[: split + 1], note[split + 2 :].decode("utf-8")
    if not block:
        raise NoteError("signed note has no signatures")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError("signed note has too many signatures", count=len(lines), limit=MAX_SIGNATURES)
    return body, [_parse_signature_line(number, line) for number, line in enumerate(lines, 1)]


def _parse_signature_line(number: int, line: str) -> _SignatureLine:
    if not line.startswith(_SIGNATURE_PREFIX):
        raise NoteError("signature line must start with an em dash and a space", line=number)
    name, _, encoded = line[len(_SIGNATURE_PREFIX) :].partition(" ")
    _check_name(name)
    # Not canonical: another party's cosignature in a form Go accepts must not spoil ours.
    raw = _b64decode(encoded, canonical=False) if encoded else b""
    if len(raw) < 5:
        raise NoteError("signature line has no signature", line=number)
    return _SignatureLine(name, raw[:4], raw[4:])


class NoteVerifier:
    """Checks signed notes against one trusted named Ed25519 key."""

    def __init__(self, name: str, public_key: bytes) -> None:
        _check_name(name)
        self.name = name
        self.key_hash = key_hash(name, public_key)
        self.public_key_bytes = public_key
        self.verifier_key = verifier_key(name, public_key)
        self._public_key = Ed25519PublicKey.from_public_bytes(public_key)

    def __repr__(self) -> str:
        return f"NoteVerifier({self.name}+{self.key_hash.hex()})"

    @classmethod
    def from_verifier_key(cls, text: str) -> NoteVerifier:
        """Load a ``<name>+<hash>+<key>`` text (surrounding whitespace is ignored)."""
        name, claimed, public_key = _parse_key_text(text.strip())
        _check_key_hash(name, claimed, public_key)
        return cls(name, public_key)

    def verify(self, note: bytes) -> bytes:
        """The note's text, if this key signed it; lines by other keys are ignored.

        Raises NoteError if the note is malformed, if no line is by this key (same name
        and key hash), or if any line by this key fails to verify.
        """
        body, lines = _split_note(note)
        ours = [line for line in lines if line.name == self.name and line.key_hash == self.key_hash]
        if not ours:
            raise NoteError("note has no signature by the trusted key", key=self.name, key_hash=self.key_hash.hex())
        for line in ours:
            try:
                self._public_key.verify(line.signature, body)
            except InvalidSignature:
                raise NoteError("signature does not verify", key=self.name, key_hash=self.key_hash.hex()) from None
        return body


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement of the log: ``size`` entries whose RFC 6962 root is ``root``."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for line in (self.origin, *self.extensions):
            if not line or "\n" in line or _CONTROL.search(line):
                raise NoteError("checkpoint lines must be non-empty, without control characters", line=line)
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise NoteError("tree size out of range", size=self.size)
        if len(self.root) != ROOT_SIZE:
            raise NoteError("root hash must be 32 bytes", length=len(self.root))


def checkpoint_body(cp: Checkpoint) -> bytes:
    """The note text to sign: origin, decimal size, base64 root, extensions; each ends in a newline."""
    lines = [cp.origin, str(cp.size), base64.b64encode(cp.root).decode("ascii"), *cp.extensions]
    return "".join(f"{line}\n" for line in lines).encode("utf-8")


def parse_checkpoint(body: bytes) -> Checkpoint:
    """The checkpoint in a note text, rejecting anything ``checkpoint_body`` would not produce."""
    lines = _note_text(body)[:-1].split("\n")
    if len(lines) < 3:
        raise NoteError("checkpoint needs origin, size and root lines", lines=len(lines))
    origin, size, root, *extensions = lines
    if len(size) > len(str(MAX_TREE_SIZE)) or not _TREE_SIZE.fullmatch(size):
        raise NoteError("tree size must be a decimal number below 2**64 without leading zeros", size=size)
    return Checkpoint(origin, int(size), _b64decode(root, canonical=True), tuple(extensions))


def open_checkpoint(note: bytes, verifier: NoteVerifier, *, origin: str | None = None) -> Checkpoint:
    """The checkpoint in a signed note, once ``verifier``'s key has been checked on it.

    If ``origin`` is given, the checkpoint must be for that log. Raises NoteError.
    """
    checkpoint = parse_checkpoint(verifier.verify(note))
    if origin is not None and checkpoint.origin != origin:
        raise NoteError("checkpoint is for another log", origin=checkpoint.origin, expected=origin)
    return checkpoint
