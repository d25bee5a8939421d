"""The one rule by which every MedLedger consumer decides whether an event's
signature is valid (ZIP 215, runtime/envelope.py and native/ed25519-batch),
and the batch check the ledger relies on: a batch verdict never differs from
checking each signature alone, a forgery inside a batch is named exactly,
and an ordinary RFC 8032 signature is valid under both ZIP 215 and libsodium."""

from __future__ import annotations

import medledger_ed25519
import nacl.bindings
import nacl.exceptions
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from medledger.identity.keyfiles import raw_public_key
from medledger.ledger import note
from medledger.ledger.intake import Admitted, Refused, SourceRecord, UNAUTHENTICATED, classify
from medledger.runtime.envelope import EnvelopeVerifier, envelope, parse_producer_keys, signed_bytes
from medledger.runtime.forgeries import invalid_positions
from medledger.testing.producers import TestProducers
from medledger.v1 import consent_pb2, events_pb2

PRODUCERS = TestProducers()
VERIFIER = EnvelopeVerifier(parse_producer_keys(PRODUCERS.keys_text), {"t": "consent.events", "i": "identity.events"})
KEYS = [Ed25519PrivateKey.generate() for _ in range(3)]


def _libsodium_accepts(key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        nacl.bindings.crypto_sign_open(signature + message, key)
        return True
    except nacl.exceptions.BadSignatureError:
        return False


@settings(max_examples=60, deadline=None)
@given(
    messages=st.lists(st.binary(max_size=600), min_size=1, max_size=40),
    flip=st.one_of(st.none(), st.tuples(st.integers(min_value=0), st.integers(0, 63), st.integers(0, 7))),
)
def test_a_batch_verdict_is_exactly_every_single_verdict(messages: list[bytes], flip: tuple[int, int, int] | None) -> None:
    keys = [raw_public_key(KEYS[i % len(KEYS)]) for i in range(len(messages))]
    signatures = [bytearray(KEYS[i % len(KEYS)].sign(m)) for i, m in enumerate(messages)]
    if flip is not None:  # one bit of one signature changed
        which, byte, bit = flip
        signatures[which % len(messages)][byte] ^= 1 << bit
    sigs = [bytes(s) for s in signatures]
    singles = [medledger_ed25519.verify(k, m, s) for k, m, s in zip(keys, messages, sigs)]
    assert medledger_ed25519.verify_batch(keys, messages, sigs) == all(singles)
    # honest signatures, and these corruptions of them, are judged alike by libsodium
    assert singles == [_libsodium_accepts(k, m, s) for k, m, s in zip(keys, messages, sigs)]
    assert all(singles) == (flip is None)


def _signed(count: int) -> tuple[list[bytes], list[bytes], list[bytes]]:
    messages = [b"event %d" % i for i in range(count)]
    keys = [raw_public_key(KEYS[i % len(KEYS)]) for i in range(count)]
    return keys, messages, [KEYS[i % len(KEYS)].sign(m) for i, m in enumerate(messages)]


def _forge(signatures: list[bytes], positions: set[int]) -> list[bytes]:
    return [bytes([s[0] ^ 1]) + s[1:] if i in positions else s for i, s in enumerate(signatures)]


@settings(max_examples=80, deadline=None)
@given(data=st.data(), count=st.integers(min_value=1, max_value=200))
def test_the_chunked_check_names_exactly_the_signatures_that_fail_alone(data: st.DataObject, count: int) -> None:
    """Whatever the forgeries' number and places (none, one, a few, a
    cluster, all; in batches of one to four chunks), the chunked check finds
    exactly what checking each alone finds."""
    forged = data.draw(st.sets(st.integers(min_value=0, max_value=count - 1)))
    keys, messages, signatures = _signed(count)
    signatures = _forge(signatures, forged)
    alone = [i for i in range(count) if not medledger_ed25519.verify(keys[i], messages[i], signatures[i])]
    assert invalid_positions(keys, messages, signatures) == alone == sorted(forged)


def test_a_batch_of_nothing_but_forgeries_is_still_named_whole() -> None:
    """Once failing chunks outnumber passing ones the rest is checked one by
    one, not skipped."""
    keys, messages, signatures = _signed(300)
    assert invalid_positions(keys, messages, _forge(signatures, set(range(300)))) == list(range(300))
    assert invalid_positions(keys, messages, signatures) == []


def test_a_malformed_batch_is_refused_not_an_error() -> None:
    key, message = raw_public_key(KEYS[0]), b"m"
    assert not medledger_ed25519.verify_batch([key], [message], [b"short"])
    assert not medledger_ed25519.verify(key[:31], message, KEYS[0].sign(message))
    assert medledger_ed25519.verify_batch([], [], [])
    with pytest.raises(ValueError):
        medledger_ed25519.verify_batch([key], [], [])


def _event(n: int, producer: str = "consent") -> bytes:
    payload = consent_pb2.ConsentRevoked(consent_id=f"c-{n}", patient_id="p")
    return PRODUCERS.seal(envelope(payload, aggregate_id="p", producer=producer))


def _resigned_with_a_changed_payload(value: bytes) -> bytes:
    env = events_pb2.EventEnvelope.FromString(value)
    env.payload.value += b"\xc0\x3e\x01"  # the signature no longer covers it
    return env.SerializeToString()


def test_a_forgery_inside_a_large_batch_is_named_and_the_rest_admitted() -> None:
    values = [_event(n) for n in range(300)]
    forged_at = {17, 218}
    for i in forged_at:
        values[i] = _resigned_with_a_changed_payload(values[i])
    records = [SourceRecord("t", 0, i, v) for i, v in enumerate(values)]
    verdicts = classify(records, VERIFIER)
    refused = {i for i, v in enumerate(verdicts) if isinstance(v, Refused)}
    assert refused == forged_at
    assert all(v.reason.startswith(UNAUTHENTICATED) and "does not verify" in v.reason
               for v in verdicts if isinstance(v, Refused))
    assert all(isinstance(verdicts[i], Admitted) for i in range(300) if i not in forged_at)


def test_a_batch_mixing_policy_refusals_and_signatures_keeps_record_order() -> None:
    records = [
        SourceRecord("t", 0, 0, _event(0)),
        SourceRecord("t", 0, 1, None),  # tombstone
        SourceRecord("i", 0, 2, _event(2)),  # a consent event on identity.events
        SourceRecord("t", 0, 3, b"\xff\xff"),
        SourceRecord("t", 0, 4, _event(4)),
    ]
    kinds = [v.kind if isinstance(v, Refused) else "ok" for v in classify(records, VERIFIER)]
    assert kinds == ["ok", "tombstone", "unauthenticated_producer", "not_an_envelope", "ok"]


def test_check_batch_agrees_with_check_for_each_envelope() -> None:
    genuine = events_pb2.EventEnvelope.FromString(_event(1))
    tampered = events_pb2.EventEnvelope.FromString(_resigned_with_a_changed_payload(_event(2)))
    unsigned = events_pb2.EventEnvelope.FromString(_event(3))
    unsigned.ClearField("signature")
    items = [("t", genuine), ("t", tampered), ("t", unsigned)]
    batch = VERIFIER.check_batch(items)
    for (topic, env), problem in zip(items, batch, strict=True):
        try:
            VERIFIER.check(topic, env)
            alone = None
        except Exception as exc:  # noqa: BLE001 - compared by message
            alone = str(exc)
        assert (str(problem) if problem else None) == alone
    assert batch[0] is None and batch[1] is not None and batch[2] is not None
    assert signed_bytes(genuine)  # what both checked


def test_a_small_order_producer_key_is_never_pinned() -> None:
    """Under ZIP 215 anyone can sign for a key of small order (here the
    identity point), so such a key line is refused where keys are pinned."""
    identity_point = b"\x01" + b"\x00" * 31
    line = note.verifier_key("consent", identity_point)
    with pytest.raises(ValueError, match="small order"):
        parse_producer_keys(line + "\n")
    # S = 0 and an R of small order: "valid" for that key under ZIP 215, for any message
    assert medledger_ed25519.verify(identity_point, b"anything", bytes(64))


def test_open_batch_opens_what_open_opens_and_refuses_what_it_refuses() -> None:
    """What every consumer's PositionedConsumer.envelopes relies on."""
    records = [
        ("t", _event(1)),
        ("t", b"\xff\xff"),
        ("t", _resigned_with_a_changed_payload(_event(2))),
        ("t", None),
        ("i", _event(3)),
        ("t", _event(4)),
    ]
    opened = VERIFIER.open_batch(records)
    for (topic, value), result in zip(records, opened, strict=True):
        try:
            alone: object = VERIFIER.open(topic, value)
        except Exception as exc:  # noqa: BLE001 - compared by message
            alone = str(exc)
        assert (str(result) if isinstance(result, Exception) else result) == alone
    assert [isinstance(r, events_pb2.EventEnvelope) for r in opened] == [True, False, False, False, False, True]
