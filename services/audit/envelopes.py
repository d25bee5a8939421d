"""Per-entry checks on the envelopes themselves, with no I/O: every producer
signature against the pinned producer keys (the shared EnvelopeVerifier and
PRODUCER_POLICY, as every consumer checks them), and the facts later checks
need, pulled out while each envelope is parsed anyway: identity keys (from
IdentityRegistered, KeyRotated, KeyRevoked, IdentityRevoked), the statements
people signed (consent terms, representative appointments, record
attestations, erasure requests, each with its service's own domain prefix),
and the events of the per-patient disclosure index.

``check_envelopes`` runs on worker threads and checks each page's producer
signatures in one ZIP 215 batch verification, which releases the GIL, so
signature checks spread over every core while the main thread hashes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Mapping, Sequence

from google.protobuf.message import DecodeError

from medledger.audit.checks import (
    APPOINTMENT_SIGNATURE, CONSENT_SIGNATURE, ENVELOPE, ERASURE_SIGNATURE, PRODUCER_SIGNATURE, RECORD_SIGNATURE,
    Finding,
)
from medledger.consent.signing import APPOINTMENT_CONTEXT, signing_message
from medledger.records.domain import ATTESTATION_PREFIX, ERASURE_PREFIX
# The events of a patient's accounting of disclosures and access report: the
# same types the records service indexes for ListDisclosures.
from medledger.records.disclosure_index import (  # noqa: F401 - re-exported for the audit modules
    ACCESS_DECIDED, BREAK_GLASS_INVOKED, BREAK_GLASS_REVIEWED, PATIENT_EVENT_TYPES, RECORDS_DISCLOSED,
)
from medledger.runtime.envelope import PRODUCER_POLICY, EnvelopeVerifier, ProducerKey
from medledger.runtime.signed import canonical
from medledger.v1 import consent_pb2, events_pb2, identity_pb2, records_pb2

# Every event type is allowed on exactly one topic, so the type names the
# topic whose policy applies (ledger entries served over gRPC carry no topic).
TOPIC_OF_TYPE: Mapping[str, str] = {
    event_type: topic for topic, types in PRODUCER_POLICY.items() for event_type in types
}


_REGISTERED = identity_pb2.IdentityRegistered.DESCRIPTOR.full_name
_ROTATED = identity_pb2.KeyRotated.DESCRIPTOR.full_name
_KEY_REVOKED = identity_pb2.KeyRevoked.DESCRIPTOR.full_name
_IDENTITY_REVOKED = identity_pb2.IdentityRevoked.DESCRIPTOR.full_name
_GRANTED = consent_pb2.ConsentGranted.DESCRIPTOR.full_name
_CREATED = records_pb2.RecordCreated.DESCRIPTOR.full_name
_AMENDED = records_pb2.RecordAmended.DESCRIPTOR.full_name
_ERASED = records_pb2.PatientDataErased.DESCRIPTOR.full_name
_REPRESENTATIVE = consent_pb2.RepresentativeRegistered.DESCRIPTOR.full_name


def pinned_verifier(keys: Mapping[str, ProducerKey]) -> EnvelopeVerifier:
    """An EnvelopeVerifier whose topic names are the logical ones."""
    return EnvelopeVerifier(keys, {topic: topic for topic in PRODUCER_POLICY})


@dataclass(frozen=True)
class KeyEvent:
    """A fact about an identity's keys, as the log states it."""

    index: int
    identity_id: str
    change: str  # "registered", "rotated", "key revoked", "identity revoked"
    at: datetime
    key_id: str = ""
    public_key: bytes = b""


@dataclass(frozen=True)
class SignedStatement:
    """A person's signature carried by an event (consent terms, a record
    attestation, an erasure request) and what it must be checked against."""

    index: int
    check: str  # CONSENT_, APPOINTMENT_, RECORD_ or ERASURE_SIGNATURE
    subject: str  # "consent <id>", "record <id> v<n>", "erasure <id>"
    signer_id: str
    signer_key_id: str
    signed_at: datetime
    recorded_at: datetime
    message: bytes  # the exact signed bytes, domain prefix included
    signature: bytes


@dataclass(frozen=True)
class PatientEvent:
    """An entry of a patient's access history, kept as its envelope bytes."""

    patient_id: str
    index: int
    event_type: str
    occurred_at: datetime
    event: bytes


@dataclass
class EnvelopeResults:
    findings: list[Finding] = field(default_factory=list)
    keys: list[KeyEvent] = field(default_factory=list)
    statements: list[SignedStatement] = field(default_factory=list)
    patient_events: list[PatientEvent] = field(default_factory=list)
    checked: int = 0


def _utc(value: object) -> datetime:
    return value.ToDatetime(tzinfo=timezone.utc)  # type: ignore[attr-defined]


def check_envelopes(
    entries: Sequence[tuple[int, bytes, str]], verifier: EnvelopeVerifier, *, index_patients: bool = False
) -> EnvelopeResults:
    """(index, event bytes, event id the ledger stored) for each entry: the
    producer signature must verify under the policy of the type's topic, and
    the stored event id must be the envelope's."""
    out = EnvelopeResults()
    parsed: list[tuple[int, bytes, str, events_pb2.EventEnvelope]] = []
    for index, event, stored_id in entries:
        try:
            parsed.append((index, event, stored_id, events_pb2.EventEnvelope.FromString(event)))
        except DecodeError as exc:
            out.findings.append(Finding(ENVELOPE, index=index, expected="a medledger.v1.EventEnvelope", found=str(exc)))
    # one ZIP 215 batch verification for the whole page (runtime/envelope.py)
    problems = verifier.check_batch([(TOPIC_OF_TYPE.get(env.event_type, "(no event topic)"), env) for *_, env in parsed])
    for (index, event, stored_id, env), problem in zip(parsed, problems, strict=True):
        if problem is not None:
            out.findings.append(Finding(PRODUCER_SIGNATURE, index=index, expected="signed by a pinned producer key",
                                        found=str(problem), detail=f"{env.event_type or 'no type'} {env.event_id}"))
            continue
        out.checked += 1
        if stored_id and stored_id != env.event_id:
            out.findings.append(Finding(ENVELOPE, index=index, expected=f"event id {env.event_id}", found=stored_id,
                                        detail="the ledger's stored event id is not the envelope's"))
        try:
            _extract(index, env, event, out, index_patients)
        except DecodeError as exc:
            out.findings.append(Finding(ENVELOPE, index=index, expected=f"a {env.event_type} payload", found=str(exc)))
    return out


def _extract(index: int, env: events_pb2.EventEnvelope, event: bytes, out: EnvelopeResults, patients: bool) -> None:
    kind = env.event_type
    if kind in PATIENT_EVENT_TYPES:
        if patients:
            out.patient_events.append(PatientEvent(env.aggregate_id, index, kind, _utc(env.occurred_at), event))
        return
    statement = _statement(index, env)
    if statement is not None:
        out.statements.append(statement)
    elif kind == _REGISTERED:
        registered = identity_pb2.IdentityRegistered.FromString(env.payload.value)
        out.keys.append(KeyEvent(index, registered.identity_id, "registered", _utc(env.occurred_at),
                                 registered.key_id, registered.public_key))
    elif kind == _ROTATED:
        rotated = identity_pb2.KeyRotated.FromString(env.payload.value)
        out.keys.append(KeyEvent(index, rotated.identity_id, "rotated", _utc(env.occurred_at),
                                 rotated.key_id, rotated.public_key))
    elif kind == _KEY_REVOKED:
        revoked = identity_pb2.KeyRevoked.FromString(env.payload.value)
        out.keys.append(KeyEvent(index, revoked.identity_id, "key revoked", _utc(env.occurred_at), revoked.key_id))
    elif kind == _IDENTITY_REVOKED:
        gone = identity_pb2.IdentityRevoked.FromString(env.payload.value)
        out.keys.append(KeyEvent(index, gone.identity_id, "identity revoked", _utc(env.occurred_at)))


def _statement(index: int, env: events_pb2.EventEnvelope) -> SignedStatement | None:
    """The signed statement an event carries, if it is one that does."""
    kind, at = env.event_type, _utc(env.occurred_at)
    if kind == _GRANTED:
        granted = consent_pb2.ConsentGranted.FromString(env.payload.value)
        t = granted.terms
        return SignedStatement(index, CONSENT_SIGNATURE, f"consent {t.consent_id}", t.signer_id, t.signer_key_id,
                               _utc(t.signed_at), at, signing_message(canonical(t)), granted.signature)
    if kind in (_CREATED, _AMENDED):
        written = (records_pb2.RecordCreated if kind == _CREATED else records_pb2.RecordAmended).FromString(env.payload.value)
        a = written.attestation
        return SignedStatement(index, RECORD_SIGNATURE, f"record {a.record_id} v{a.version}", a.author_id,
                               a.author_key_id, _utc(a.signed_at), at, ATTESTATION_PREFIX + canonical(a),
                               written.author_signature)
    if kind == _REPRESENTATIVE:
        appointed = consent_pb2.RepresentativeRegistered.FromString(env.payload.value)
        if not appointed.appointment:
            return None  # appointed by an organization on a legal basis: no patient signature
        appointment = consent_pb2.RepresentativeAppointment.FromString(appointed.appointment)
        return SignedStatement(index, APPOINTMENT_SIGNATURE, f"appointment {appointment.appointment_id}",
                               appointment.patient_id, appointment.signer_key_id, _utc(appointment.signed_at), at,
                               APPOINTMENT_CONTEXT + appointed.appointment,
                               appointed.signature)
    if kind == _ERASED:
        erased = records_pb2.PatientDataErased.FromString(env.payload.value)
        r = erased.request
        return SignedStatement(index, ERASURE_SIGNATURE, f"erasure {r.erasure_id}", r.signer_id, r.signer_key_id,
                               _utc(r.signed_at), at, ERASURE_PREFIX + canonical(r), erased.signature)
    return None
