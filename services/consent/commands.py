"""Carrying out consent commands: gather the facts (identity service,
projection), let the domain decide, record the events on consent.events and
apply them locally before answering.

Consents are event-sourced: consent.events is the source of truth and every
replica's projection is the state. A command first brings the projection up
to the log end (``stream.sync``), so it decides on the latest state whichever
replica it reached; concurrent commands on two replicas can at worst produce
a repeated event, which ``evolve`` ignores. Events are published with
acks=all and applied locally before the RPC returns, so the caller's next
read on this replica sees them. Events go through the transactional outbox
(runtime/outbox.py): committed first, published by the relay, never on
Kafka for a command whose transaction failed. What must not go on an event
(a break-glass justification, a review note) commits in the same
transaction, sealed (runtime/sealing.py).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Awaitable, Callable, Sequence, TypeAlias

import asyncpg
from google.protobuf.message import Message

from medledger.consent import domain, store, validation
from medledger.consent.domain import (
    Actor, BreakGlassRecord, ConsentRecord, IdentityFacts, PatientState, RepresentationRecord,
)
from medledger.consent.fhir import is_resource_type
from medledger.consent.identity import IdentityDirectory
from medledger.consent.projection import Projection
from medledger.consent.settings import ConsentSettings
from medledger.consent.signing import (
    APPOINTMENT_CONTEXT, SIGNATURE_BYTES, SigningKey, parse_appointment, parse_canonical, signing_message, verify_signed,
)
from medledger.consent.stream import ConsentStream
from medledger.runtime.auth import Caller
from medledger.runtime.errors import (
    AlreadyExists, DependencyUnavailable, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied,
)
from medledger.runtime.envelope import envelope, new_event_id
from medledger.runtime.outbox import Conn, Outbox, OutboxRelay
from medledger.runtime.sealing import Sealer
from medledger.v1 import consent_pb2, events_pb2

SERVICE = "consent"
# consent.proto numbers, as its fields carry them
ReviewOutcome: TypeAlias = "consent_pb2.ReviewStatus.ValueType"
BreakGlassReason: TypeAlias = "consent_pb2.BreakGlassReason.ValueType"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def actor(caller: Caller) -> Actor:
    return Actor(caller.subject, caller.kind)


def outcome_name(outcome: ReviewOutcome) -> str:
    """A review outcome as the database stores it (APPROVED, INAPPROPRIATE)."""
    return consent_pb2.ReviewStatus.Name(outcome).removeprefix("REVIEW_STATUS_")


@dataclass
class Ports:
    """The live dependencies, reachable once the host connected them."""

    pool: Callable[[], asyncpg.Pool]
    identity: Callable[[], IdentityDirectory]
    outbox: Outbox
    relay: Callable[[], OutboxRelay]


class ConsentCommands:
    def __init__(
        self, settings: ConsentSettings, topic: str, projection: Projection, stream: ConsentStream, ports: Ports,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.projection = projection
        self.stream = stream
        self.ports = ports
        self.clock = clock
        self.sealer = store.text_sealer(settings.data_key)
        self.window = validation.SigningWindow(
            timedelta(seconds=settings.signing_skew_s), timedelta(seconds=settings.signature_max_age_s)
        )

    # ---- recording ----

    async def _record(self, events: Sequence[Message], actor: str) -> None:
        envs = [envelope(e, aggregate_id=domain.aggregate_id(e), producer=SERVICE, actor=actor) for e in events]
        await self._record_envelopes(envs)

    async def _record_envelopes(
        self, envs: Sequence[events_pb2.EventEnvelope], also: Callable[[Conn], Awaitable[None]] | None = None
    ) -> None:
        """Commit the signed envelopes to the outbox (with ``also``'s writes, in
        one transaction), wait until the relay has them on consent.events
        (acks=all), then apply them locally so the caller's next read here
        sees them. Nothing reaches Kafka unless the transaction committed."""
        pool = self.ports.pool()
        async with pool.acquire() as conn, conn.transaction():
            if also is not None:
                await also(conn)
            for env in envs:
                await self.ports.outbox.enqueue(conn, env)
        if not await self.ports.relay().wait_published([e.event_id for e in envs], pool, self.settings.publish_wait_s):
            raise DependencyUnavailable(
                "recorded, but Kafka has not accepted it yet; it takes effect once published (do not repeat it)"
            )
        for env in envs:
            self.projection.apply(env)

    async def _record_reviewed(
        self, events: Sequence[Message], caller: Caller, now: datetime, also: Callable[[Conn], Awaitable[None]]
    ) -> None:
        """Record a review's events at ``now``, the note kept by ``also``."""
        envs = [
            envelope(e, aggregate_id=domain.aggregate_id(e), producer=SERVICE, actor=caller.subject, occurred_at=now)
            for e in events
        ]
        await self._record_envelopes(envs, also=also)

    def _state(self, patient_id: str) -> PatientState:
        return self.projection.patient(patient_id) or PatientState(patient_id)

    async def _current_key(self, signer_id: str, key_id: str, now: datetime) -> SigningKey:
        """The named key of the signer as the identity service knows it now."""
        try:
            return await self.ports.identity().signing_key(signer_id, key_id, now)
        except NotFound:
            raise PermissionDenied(f"key {key_id} is not a key of signer {signer_id}") from None

    # ---- grant ----

    async def grant(self, caller: Caller, encoded_terms: bytes, signature: bytes) -> ConsentRecord:
        if not signature:
            raise InvalidArgument("the grant is unsigned: signature is required")
        if len(signature) != SIGNATURE_BYTES:
            raise InvalidArgument(f"signature must be a {SIGNATURE_BYTES}-byte Ed25519 signature")
        terms = parse_canonical(encoded_terms)
        now = self.clock()
        validation.validate_terms(terms, now, self.window, is_resource_type)
        await self.stream.sync()
        if self.projection.consent(terms.consent_id) is not None:
            raise AlreadyExists(f"consent {terms.consent_id} already exists")
        state = self._state(terms.patient_id)
        domain.signer_role(terms, state)
        identity = self.ports.identity()
        patient = await identity.facts(terms.patient_id)
        domain.require_patient(patient)
        signer = patient if terms.signer_id == patient.identity_id else await identity.facts(terms.signer_id)
        if not signer.active:
            raise PermissionDenied(f"signer {signer.identity_id} is revoked")
        key = await self._current_key(terms.signer_id, terms.signer_key_id, now)
        verify_signed(key, now, domain.utc(terms.signed_at), signing_message(encoded_terms), signature, "consent")
        grantee = await identity.facts(terms.grantee_id)
        events = domain.decide(state, domain.GrantConsent(terms, signature, grantee, caller.subject))
        await self._record(events, actor=terms.signer_id)
        return self._consent(terms.consent_id)

    def _consent(self, consent_id: str) -> ConsentRecord:
        consent = self.projection.consent(consent_id)
        if consent is None:
            raise NotFound(f"consent {consent_id} not found")
        return consent

    # ---- revoke ----

    async def revoke(self, caller: Caller, consent_id: str) -> ConsentRecord:
        """Revoke, then wait out the staleness bound: when this returns, every
        replica still answering has applied the revocation (see stream.py)."""
        if not consent_id:
            raise InvalidArgument("consent_id is required")
        await self.stream.sync()
        consent = self._consent(consent_id)
        events = domain.decide(self._state(consent.patient_id), domain.RevokeConsent(consent_id, caller.subject))
        await self._record(events, actor=caller.subject)
        await asyncio.sleep(self.settings.max_staleness_s)
        return self._consent(consent_id)

    # ---- expiry ----

    async def expire_due(self) -> int:
        """Publish ConsentExpired for every window that ended (leader only)."""
        await self.stream.sync()
        now = self.clock()
        done = 0
        for consent in self.projection.due_expiries(now):
            command = domain.ExpireConsent(consent.consent_id, now)
            try:
                await self._record(domain.decide(self._state(consent.patient_id), command), actor="")
            except DependencyUnavailable:
                self.projection.expiry_failed(consent)
                raise
            done += 1
        return done

    # ---- break-glass ----

    async def invoke_break_glass(
        self, caller: Caller, patient_id: str, justification: str, organization_id: str, reason: BreakGlassReason
    ) -> tuple[BreakGlassRecord, str]:
        """Allowed for an active practitioner with an active membership, a
        reason code and a justification, within the daily limit. The
        justification goes sealed to the database, its hash to the event, in
        one transaction with the outbox row."""
        if not patient_id:
            raise InvalidArgument("patient_id is required")
        domain.require_break_glass_reason(reason)
        text = validation.validate_justification(justification)
        await self.stream.sync()
        patient = self.projection.identity(patient_id)
        if patient is None or patient.kind != "PATIENT":
            raise NotFound(f"patient {patient_id} is not a registered patient")
        practitioner = self.projection.identity(caller.subject) or IdentityFacts(caller.subject, caller.kind, False)
        now = self.clock()
        command = domain.InvokeBreakGlass(
            break_glass_id=new_event_id(), practitioner=practitioner, organization_id=organization_id,
            justification_sha256=sha256(text), valid_until=now + timedelta(seconds=self.settings.break_glass_ttl_s),
            reason=reason,
        )
        (event,) = domain.decide(self._state(patient_id), command)
        assert isinstance(event, consent_pb2.BreakGlassInvoked)
        env = envelope(event, aggregate_id=patient_id, producer=SERVICE, actor=caller.subject, occurred_at=now)
        stored = domain.break_glass_record(event, env.event_id, now)

        async def within_limit_and_kept(conn: Conn) -> None:
            recent = await store.break_glass_since(conn, caller.subject, now - timedelta(days=1))
            domain.require_break_glass_allowance(recent, self.settings.break_glass_daily_limit)
            await store.insert_break_glass(conn, self.sealer, stored, consent_pb2.BreakGlassReason.Name(reason), text)

        await self._record_envelopes([env], also=within_limit_and_kept)
        return self._break_glass(stored.break_glass_id), text

    def _break_glass(self, break_glass_id: str) -> BreakGlassRecord:
        record = self.projection.break_glass(break_glass_id)
        if record is None:
            raise NotFound(f"break-glass {break_glass_id} not found")
        return record

    async def review_break_glass(
        self, caller: Caller, break_glass_id: str, outcome: ReviewOutcome, note: str
    ) -> tuple[BreakGlassRecord, str]:
        """An auditor or the organization reviews a break-glass once; the note
        goes sealed to the database, its hash to BreakGlassReviewed."""
        text = await self._review_input(break_glass_id, "break_glass_id", outcome, note)
        record = self._break_glass(break_glass_id)
        command = domain.ReviewBreakGlass(break_glass_id, actor(caller), outcome, sha256(text))
        events = domain.decide(self._state(record.patient_id), command)
        now = self.clock()

        async def keep_note(conn: Conn) -> None:
            await self._insert_review(conn, store.BREAK_GLASS, break_glass_id, record.patient_id, outcome, caller, now, text)

        await self._record_reviewed(events, caller, now, keep_note)
        return self._break_glass(break_glass_id), text

    async def _review_input(self, subject_id: str, name: str, outcome: ReviewOutcome, note: str) -> str:
        """The checked note of a review request, once the projection is at the log end."""
        if not subject_id:
            raise InvalidArgument(f"{name} is required")
        domain.require_review_outcome(outcome)
        text = validation.validate_note(note)
        await self.stream.sync()
        return text

    async def _insert_review(
        self, conn: Conn, kind: str, subject_id: str, patient_id: str, outcome: ReviewOutcome, caller: Caller,
        now: datetime, note: str,
    ) -> None:
        try:
            await store.insert_review(
                conn, self.sealer, kind, subject_id, patient_id, outcome_name(outcome), caller.subject, now, note
            )
        except asyncpg.UniqueViolationError:
            raise FailedPrecondition(f"{subject_id} was reviewed already (at the same moment, by someone else)") from None

    # ---- representatives ----

    async def register_representative(
        self, caller: Caller, request: consent_pb2.RegisterRepresentativeRequest
    ) -> RepresentationRecord:
        """The patient's signed appointment, or the registering organization's
        stating legal basis and evidence (flagged for review). Appointing an
        active representative again returns the existing appointment."""
        patient_id, representative_id = request.patient_id, request.representative_id
        if not patient_id or not representative_id:
            raise InvalidArgument("patient_id and representative_id are required")
        signed = bool(request.appointment or request.signature)
        if signed == bool(request.legal_basis or request.evidence_sha256):
            raise InvalidArgument(
                "appoint either with the patient's signature (appointment and signature) or as the registering "
                "organization (legal_basis and evidence_sha256), not both or neither"
            )
        now = self.clock()
        appointment = self._signed_appointment(request, now) if signed else None
        rid = appointment.appointment_id if appointment is not None else new_event_id()
        await self.stream.sync()
        if self.projection.representation(rid) is not None:
            raise AlreadyExists(f"appointment {rid} already exists")
        identity = self.ports.identity()
        patient = await identity.facts(patient_id)
        domain.require_patient(patient)
        if appointment is not None:
            key = await self._current_key(patient_id, appointment.signer_key_id, now)
            verify_signed(
                key, now, domain.utc(appointment.signed_at), APPOINTMENT_CONTEXT + request.appointment,
                request.signature, "appointment",
            )
        command = domain.RegisterRepresentative(
            representation_id=rid, representative=await identity.facts(representative_id), patient=patient,
            by=caller.subject, legal_basis=request.legal_basis, evidence_sha256=request.evidence_sha256,
            appointment=request.appointment, signature=request.signature,
        )
        await self._record(domain.decide(self._state(patient_id), command), actor=caller.subject)
        current = self._state(patient_id).active_representation(representative_id)
        assert current is not None
        return current

    def _signed_appointment(
        self, request: consent_pb2.RegisterRepresentativeRequest, now: datetime
    ) -> consent_pb2.RepresentativeAppointment:
        if len(request.signature) != SIGNATURE_BYTES:
            raise InvalidArgument(f"signature must be a {SIGNATURE_BYTES}-byte Ed25519 signature")
        appointment = parse_appointment(request.appointment)
        validation.validate_appointment(appointment, now, self.window)
        if (appointment.patient_id, appointment.representative_id) != (request.patient_id, request.representative_id):
            raise InvalidArgument("the signed appointment names another patient or representative than the request")
        return appointment

    async def end_representation(self, caller: Caller, patient_id: str, representative_id: str) -> RepresentationRecord:
        if not patient_id or not representative_id:
            raise InvalidArgument("patient_id and representative_id are required")
        await self.stream.sync()
        patient = await self.ports.identity().facts(patient_id)
        domain.require_patient(patient)
        events = domain.decide(self._state(patient_id), domain.EndRepresentation(representative_id, patient, actor(caller)))
        await self._record(events, actor=caller.subject)
        (ended,) = events
        assert isinstance(ended, consent_pb2.RepresentationEnded)
        return self._state(patient_id).representations[ended.representation_id]

    def _representation(self, rid: str) -> RepresentationRecord:
        record = self.projection.representation(rid)
        if record is None:
            raise NotFound(f"representation {rid} not found")
        return record

    async def review_representation(
        self, caller: Caller, rid: str, outcome: ReviewOutcome, note: str
    ) -> tuple[RepresentationRecord, str]:
        """An auditor reviews an organization's appointment once;
        INAPPROPRIATE ends it in the same transaction."""
        text = await self._review_input(rid, "representation_id", outcome, note)
        record = self._representation(rid)
        events = domain.decide(
            self._state(record.patient_id), domain.ReviewRepresentation(rid, actor(caller), outcome, sha256(text))
        )
        now = self.clock()

        async def keep_note(conn: Conn) -> None:
            await self._insert_review(conn, store.REPRESENTATION, rid, record.patient_id, outcome, caller, now, text)

        await self._record_reviewed(events, caller, now, keep_note)
        return self._representation(rid), text
