"""EventEnvelopes: building, signing and verifying them (docs/architecture.md,
Events and Event signing). Pure: no Kafka, no database, no gRPC.

Every envelope on an event topic is signed by the service that produced it,
with an Ed25519 key whose verifier text every consumer pins in its settings
(``MEDLEDGER_EVENT_PRODUCER_KEYS_FILE``). A consumer trusts an envelope only
when the topic allows its event type from its producer, the key belongs to
that producer, and the signature covers every byte but the signature itself.
Kafka access alone is then never enough to grant access, change a key or get
a ledger entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Collection, Iterable, Mapping, Sequence

import medledger_ed25519
import nacl.bindings
import uuid6
from google.protobuf.message import DecodeError, Message

from medledger.ledger.note import NoteError, NoteSigner, NoteVerifier
from medledger.runtime.forgeries import invalid_positions
from medledger.v1 import events_pb2

SIGNED_PREFIX = b"medledger.v1.EventEnvelope/signed\n"
SIGNATURE_BYTES = 64

IDENTITY, CONSENT, RECORDS, MONITOR = "identity", "consent", "records", "monitor"

# Which service may publish which event type on which logical topic. A type
# not listed for a topic is refused there, whoever signed it.
PRODUCER_POLICY: Mapping[str, Mapping[str, frozenset[str]]] = {
    "identity.events": {
        f"medledger.v1.{name}": frozenset({IDENTITY})
        for name in (
            "IdentityRegistered", "KeyRotated", "KeyRevoked", "IdentityRevoked", "MembershipGranted", "MembershipEnded",
        )
    },
    "consent.events": {
        f"medledger.v1.{name}": frozenset({CONSENT})
        for name in (
            "ConsentGranted", "ConsentRevoked", "ConsentExpired", "BreakGlassInvoked", "BreakGlassReviewed",
            "RepresentativeRegistered", "RepresentationEnded", "RepresentationReviewed",
        )
    },
    "records.events": {
        f"medledger.v1.{name}": frozenset({RECORDS})
        for name in ("RecordCreated", "RecordAmended", "PatientDataErased", "ResearchArtifactRegistered")
    },
    "access.events": {
        "medledger.v1.AccessDecided": frozenset({CONSENT}),
        "medledger.v1.RecordsDisclosed": frozenset({RECORDS}),
    },
    "access.alerts": {"medledger.v1.AccessAlert": frozenset({MONITOR})},
}


class UnauthenticatedEvent(ValueError):
    """An envelope that no allowed producer signed: never applied, never sequenced."""


def new_event_id() -> str:
    return str(uuid6.uuid7())


def envelope(
    payload: Message,
    *,
    aggregate_id: str,
    producer: str,
    actor: str = "",
    event_id: str | None = None,
    occurred_at: datetime | None = None,
) -> events_pb2.EventEnvelope:
    """Wrap a payload message (unsigned; an EventSigner seals it). Callers
    must put no PHI in the payload."""
    env = events_pb2.EventEnvelope(
        event_id=event_id or new_event_id(),
        event_type=payload.DESCRIPTOR.full_name,
        aggregate_id=aggregate_id,
        producer=producer,
        actor=actor,
    )
    env.occurred_at.FromDatetime(occurred_at or datetime.now(timezone.utc))
    env.payload.Pack(payload)
    return env


def signed_bytes(env: events_pb2.EventEnvelope) -> bytes:
    """What the signature covers: the domain prefix, then the envelope
    serialized deterministically without its signature."""
    unsigned = events_pb2.EventEnvelope()
    unsigned.CopyFrom(env)
    unsigned.ClearField("signature")
    return SIGNED_PREFIX + unsigned.SerializeToString(deterministic=True)


def key_id(name: str, key_hash: bytes) -> str:
    return f"{name}+{key_hash.hex()}"


class EventSigner:
    """Seals the envelopes one service produces with that service's event key."""

    def __init__(self, note_signer: NoteSigner) -> None:
        self.service = note_signer.name
        self._signer = note_signer
        self.key_id = key_id(note_signer.name, note_signer.key_hash)
        self.verifier_key = note_signer.verifier_key

    @classmethod
    def from_key_text(cls, text: str) -> EventSigner:
        return cls(NoteSigner.from_signer_key(text))

    @classmethod
    def generate(cls, service: str) -> EventSigner:
        return cls(NoteSigner.generate(service))

    @property
    def signer_key(self) -> str:
        """The secret key text, for the service's key file."""
        return self._signer.signer_key

    def sign(self, env: events_pb2.EventEnvelope) -> events_pb2.EventEnvelope:
        """Set producer, key id and signature in place; returns the envelope."""
        env.producer = self.service
        env.producer_key_id = self.key_id
        env.signature = self._signer.sign_raw(signed_bytes(env))
        return env

    def seal(self, env: events_pb2.EventEnvelope) -> bytes:
        """The signed envelope's bytes: exactly the Kafka record value."""
        return self.sign(env).SerializeToString()


@dataclass(frozen=True)
class ProducerKey:
    service: str
    key_id: str
    public_key: bytes


def parse_producer_keys(text: str) -> dict[str, ProducerKey]:
    """Verifier-key lines (blank lines and ``#`` comments ignored) by key id;
    a malformed line is an error naming its number."""
    keys: dict[str, ProducerKey] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            verifier = NoteVerifier.from_verifier_key(line)
        except NoteError as exc:
            raise ValueError(f"producer key line {number}: {exc}") from None
        if not valid_public_key(verifier.public_key_bytes):
            raise ValueError(f"producer key line {number}: not a usable Ed25519 public key (small order or off the curve)")
        kid = key_id(verifier.name, verifier.key_hash)
        keys[kid] = ProducerKey(verifier.name, kid, verifier.public_key_bytes)
    return keys


def _verifies(public_key: bytes, message: bytes, signature: bytes) -> bool:
    # ZIP 215 (medledger_ed25519, on ed25519-consensus), the one rule every
    # MedLedger verifier applies, so that a batch verification (check_batch)
    # and a single one never disagree; it releases the GIL, so threads verify
    # in parallel (docs/architecture.md, Decisions).
    return medledger_ed25519.verify(public_key, message, signature)


def valid_public_key(raw: bytes) -> bool:
    """A 32-byte Ed25519 point, canonical, on the curve and not of small order
    (libsodium's check). Under ZIP 215 anyone could sign for a small-order key,
    so such a key is never pinned."""
    return len(raw) == 32 and bool(nacl.bindings.crypto_core_ed25519_is_valid_point(raw))


def _parsed(value: bytes | None) -> events_pb2.EventEnvelope | UnauthenticatedEvent:
    """A record value as an envelope, or why it is not one."""
    try:
        return events_pb2.EventEnvelope.FromString(value or b"")
    except DecodeError as exc:
        return UnauthenticatedEvent(f"not a medledger.v1.EventEnvelope: {exc}")


class EnvelopeVerifier:
    """Decides whether an envelope read from a topic is authentic."""

    def __init__(self, keys: Mapping[str, ProducerKey], topic_kinds: Mapping[str, str]) -> None:
        """``topic_kinds`` maps each actual topic name (prefix included) to its
        logical name in PRODUCER_POLICY."""
        self.keys = dict(keys)
        self.topic_kinds = dict(topic_kinds)

    def check(self, topic: str, env: events_pb2.EventEnvelope) -> None:
        """Raise UnauthenticatedEvent unless ``env`` may be trusted on ``topic``."""
        key = self.producer_key(topic, env)
        if not _verifies(key.public_key, signed_bytes(env), env.signature):
            raise UnauthenticatedEvent(f"signature does not verify with {key.key_id}")

    def producer_key(self, topic: str, env: events_pb2.EventEnvelope) -> ProducerKey:
        """The pinned key that must have signed ``env`` on ``topic``, once the
        producer policy allows its producer and type there and the signature
        has the right length; UnauthenticatedEvent otherwise. The signature
        itself is not checked here."""
        allowed = PRODUCER_POLICY.get(self.topic_kinds.get(topic, ""), {}).get(env.event_type)
        if allowed is None:
            raise UnauthenticatedEvent(f"{env.event_type or 'no event type'} is not published on {topic}")
        if env.producer not in allowed:
            raise UnauthenticatedEvent(f"{env.producer or 'no producer'} may not publish {env.event_type}")
        key = self.keys.get(env.producer_key_id)
        if key is None:
            raise UnauthenticatedEvent(f"unknown producer key {env.producer_key_id[:80] or '(none)'}")
        if key.service != env.producer:
            raise UnauthenticatedEvent(f"key {key.key_id} belongs to {key.service}, not {env.producer}")
        if len(env.signature) != SIGNATURE_BYTES:
            raise UnauthenticatedEvent("envelope is unsigned" if not env.signature else "malformed signature")
        return key

    def check_batch(
        self, items: Sequence[tuple[str, events_pb2.EventEnvelope]]
    ) -> list[UnauthenticatedEvent | None]:
        """check() for each (topic, envelope), in order: None where it may be
        trusted, else why not. Every signature is checked in one batch
        verification, several times cheaper per event than one by one, and
        exact: under ZIP 215 a batch verifies iff each of its signatures does.
        When the batch fails, checking it again in chunks names the
        forgeries (forgeries.py)."""
        verdicts: list[UnauthenticatedEvent | None] = []
        signed: list[tuple[int, ProducerKey, bytes, bytes]] = []
        for position, (topic, env) in enumerate(items):
            try:
                key = self.producer_key(topic, env)
            except UnauthenticatedEvent as exc:
                verdicts.append(exc)
                continue
            verdicts.append(None)
            signed.append((position, key, signed_bytes(env), env.signature))
        forged = invalid_positions(
            [key.public_key for _, key, _, _ in signed], [m for _, _, m, _ in signed], [s for _, _, _, s in signed]
        ) if signed else []
        for index in forged:
            position, key = signed[index][0], signed[index][1]
            verdicts[position] = UnauthenticatedEvent(f"signature does not verify with {key.key_id}")
        return verdicts

    def open(self, topic: str, value: bytes | None) -> events_pb2.EventEnvelope:
        """Parse and check a record value; UnauthenticatedEvent if it is not a
        trustworthy envelope."""
        env = _parsed(value)
        if isinstance(env, UnauthenticatedEvent):
            raise env
        self.check(topic, env)
        return env

    def open_batch(
        self, records: Sequence[tuple[str, bytes | None]], types: Collection[str] | None = None
    ) -> list[events_pb2.EventEnvelope | UnauthenticatedEvent | None]:
        """open() for each (topic, record value), in order, the signatures
        checked in one batch verification (check_batch): the envelope where it
        may be trusted, else why not. ``types``: only envelopes of these types
        are checked; any other record (not an envelope included) is None,
        neither verified nor reported."""
        parsed: list[events_pb2.EventEnvelope | UnauthenticatedEvent | None] = [_parsed(value) for _, value in records]
        if types is not None:
            parsed = [env if isinstance(env, events_pb2.EventEnvelope) and env.event_type in types else None
                      for env in parsed]
        to_check = [(topic, env) for (topic, _), env in zip(records, parsed) if isinstance(env, events_pb2.EventEnvelope)]
        problems = iter(self.check_batch(to_check))
        return [
            (next(problems) or env) if isinstance(env, events_pb2.EventEnvelope) else env
            for env in parsed
        ]


def topic_kinds(prefix: str, logical: Iterable[str] = PRODUCER_POLICY) -> dict[str, str]:
    """Actual topic name -> logical name, for topics under ``prefix``."""
    return {prefix + name: name for name in logical}
