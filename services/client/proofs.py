"""Offline checks of what the records service serves: that exactly this
content was sequenced on the ledger, trusting nothing but the keys the
verifier pinned. Pure: no network, no gRPC.

A served record version verifies when (docs/architecture.md, Ledger contract
and Event signing; records.proto, "proofs"):

1. its ProofBundle checks out against the pinned ledger verifier key and
   origin: checkpoint signature, leaf hash, inclusion proof to the signed root
   (``medledger.audit.prove.verify_bundle``, the same check as
   ``medledger audit verify-proof``), and, with producer keys pinned, the
   records service's signature on the proved event;
2. the proved event is the version's RecordCreated / RecordAmended: same
   event id, and the attestation in the event is byte for byte the one served;
3. the attestation's commitment is ``SHA-256(salt || resource_json)`` of the
   content served (after erasure there is no content left to compare, which
   the result says);
4. given the author's public key (``IdentityClient.resolve_key``), the
   author's signature over the attestation verifies.

Any failure raises ``ProofInvalid`` naming the check; a version the ledger
has not sequenced yet raises ``ProofPending``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from medledger.audit.envelopes import pinned_verifier
from medledger.audit.prove import verify_bundle
from medledger.client.attestation import attestation_message, canonical, commitment
from medledger.ledger import note
from medledger.runtime.envelope import EnvelopeVerifier, parse_producer_keys
from medledger.v1 import events_pb2, ledger_pb2, records_pb2


class ProofInvalid(ValueError):
    """What was served does not prove what it claims; the message says which check failed."""


class ProofPending(LookupError):
    """The ledger has not sequenced the version yet: read it again shortly."""


@dataclass(frozen=True)
class TrustAnchors:
    """What a verifier pins out of band: the ledger's checkpoint verifier key
    (``<name>+<hash>+<key>``, as the operator publishes it), the log's origin
    line, and optionally the producers' event verifier keys (the deployment's
    ``event-producers.pub``)."""

    ledger: note.NoteVerifier
    origin: str | None = None
    producers: EnvelopeVerifier | None = None

    @classmethod
    def from_texts(cls, ledger_key: str, origin: str | None = None, producer_keys: str | None = None) -> "TrustAnchors":
        producers = pinned_verifier(parse_producer_keys(producer_keys)) if producer_keys is not None else None
        return cls(note.NoteVerifier.from_verifier_key(ledger_key), origin, producers)

    @classmethod
    def from_files(
        cls, ledger_key_file: str | Path, origin: str | None = None, producer_keys_file: str | Path | None = None
    ) -> "TrustAnchors":
        producers = Path(producer_keys_file).read_text() if producer_keys_file else None
        return cls.from_texts(Path(ledger_key_file).read_text(), origin, producers)


@dataclass(frozen=True)
class ProvenEvent:
    """A ledger entry proved against a signed checkpoint."""

    index: int
    envelope: events_pb2.EventEnvelope
    checkpoint: note.Checkpoint


@dataclass(frozen=True)
class VerifiedRecord:
    """A record version proved to be on the ledger."""

    record: records_pb2.Record
    proven: ProvenEvent
    content_checked: bool
    """False only when the data was erased: the commitment is on the ledger
    but there is no content left to compare it with."""
    author_checked: bool


def verify_proof(bundle: ledger_pb2.ProofBundle, anchors: TrustAnchors) -> ProvenEvent:
    """The bundle's event, once the bundle checks out against the anchors."""
    result = verify_bundle(bundle, anchors.ledger, anchors.producers)
    if not result.valid:
        raise ProofInvalid("; ".join(_describe(finding.as_dict()) for finding in result.findings))
    try:
        checkpoint = note.open_checkpoint(bundle.checkpoint, anchors.ledger, origin=anchors.origin)
        envelope = events_pb2.EventEnvelope.FromString(bundle.entry.event)
    except (note.NoteError, DecodeError) as exc:
        raise ProofInvalid(f"checkpoint or entry: {exc}") from None
    return ProvenEvent(bundle.entry.index, envelope, checkpoint)


def verify_record(
    reply: records_pb2.GetRecordResponse, anchors: TrustAnchors, author_public_key: bytes | None = None
) -> VerifiedRecord:
    """Check a GetRecord answer as the module docstring says; the result says
    which optional checks could be made."""
    record = reply.record
    if reply.proof_status != records_pb2.PROOF_INCLUDED or not reply.HasField("proof"):
        raise ProofPending(f"record {record.record_id} version {record.version} is not on the ledger yet")
    proven = verify_proof(reply.proof, anchors)
    if proven.envelope.event_id != record.event_id:
        raise ProofInvalid(f"the proof is for event {proven.envelope.event_id}, the record's event is {record.event_id}")
    _check_event_matches(proven.envelope, record)
    content_checked = _check_content(record)
    author_checked = author_public_key is not None
    if author_public_key is not None:
        _check_author(record, author_public_key)
    return VerifiedRecord(record, proven, content_checked, author_checked)


def _check_event_matches(envelope: events_pb2.EventEnvelope, record: records_pb2.Record) -> None:
    event: records_pb2.RecordCreated | records_pb2.RecordAmended
    event = records_pb2.RecordCreated() if record.version == 1 else records_pb2.RecordAmended()
    if not envelope.payload.Is(event.DESCRIPTOR):
        raise ProofInvalid(f"the proved event is a {envelope.event_type}, not a {event.DESCRIPTOR.full_name}")
    envelope.payload.Unpack(event)
    if canonical(event.attestation) != canonical(record.attestation):
        raise ProofInvalid("the attestation on the ledger differs from the one served")
    attested = event.attestation
    if (attested.record_id, attested.version, attested.commitment) != (record.record_id, record.version, record.commitment):
        raise ProofInvalid("the ledger's attestation names another record, version or commitment than the one served")
    if event.author_signature != record.author_signature:
        raise ProofInvalid("the author signature on the ledger differs from the one served")


def _check_content(record: records_pb2.Record) -> bool:
    if record.HasField("erased_at") and not record.resource_json:
        return False
    if len(record.salt) != 32:
        raise ProofInvalid(f"the served salt is {len(record.salt)} bytes, not 32")
    if commitment(record.salt, record.resource_json.encode("utf-8")) != record.attestation.commitment:
        raise ProofInvalid("the served content does not match the commitment on the ledger")
    return True


def _check_author(record: records_pb2.Record, public_key: bytes) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(record.author_signature, attestation_message(record.attestation))
    except (InvalidSignature, ValueError):
        raise ProofInvalid(f"the author signature does not verify with the key given for {record.author_id}") from None


def _describe(finding: dict[str, object]) -> str:
    return ", ".join(f"{key} {value}" for key, value in finding.items())
