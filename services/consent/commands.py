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
Kafka for a command whose transaction failed.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Awaitable, Callable, Sequence

import asyncpg
from google.protobuf.message import Message

from medledger.consent import domain, store, validation
from medledger.consent.domain import BreakGlassRecord, ConsentRecord, IdentityFacts, PatientState
from medledger.consent.fhir import is_resource_type
from medledger.consent.identity import IdentityDirectory
from medledger.consent.projection import Projection
from medledger.consent.settings import ConsentSettings
from medledger.consent.signing import SIGNATURE_BYTES, parse_canonical, verify_consent_signature
from medledger.consent.stream import ConsentStream
from medledger.runtime.auth import Caller
from medledger.runtime.errors import AlreadyExists, DependencyUnavailable, InvalidArgument, NotFound, PermissionDenied
from medledger.runtime.envelope import envelope, new_event_id
from medledger.runtime.outbox import Conn, Outbox, OutboxRelay
from medledger.v1 import consent_pb2, events_pb2

SERVICE = "consent"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


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

    def _state(self, patient_id: str) -> PatientState:
        return self.projection.patient(patient_id) or PatientState(patient_id)

    # ---- grant ----

    async def grant(self, caller: Caller, encoded_terms: bytes, signature: bytes) -> ConsentRecord:
        if not signature:
            raise InvalidArgument("the grant is unsigned: signature is required")
        if len(signature) != SIGNATURE_BYTES:
            raise InvalidArgument(f"signature must be a {SIGNATURE_BYTES}-byte Ed25519 signature")
        terms = parse_canonical(encoded_terms)
        now = self.clock()
        validation.validate_terms(terms, now, timedelta(seconds=self.settings.signing_skew_s), is_resource_type)
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
        signed_at = domain.utc(terms.signed_at)
        try:
            key = await identity.signing_key(terms.signer_id, terms.signer_key_id, signed_at)
        except NotFound:
            raise PermissionDenied(f"key {terms.signer_key_id} is not a key of signer {terms.signer_id}") from None
        verify_consent_signature(key, signed_at, encoded_terms, signature)
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
        self, caller: Caller, patient_id: str, justification: str, organization_id: str
    ) -> tuple[BreakGlassRecord, str]:
        """Allowed for an active practitioner with an active membership; the
        justification goes to the database, its hash to the event, in one
        transaction with the outbox row."""
        if not patient_id:
            raise InvalidArgument("patient_id is required")
        text = validation.validate_justification(justification)
        await self.stream.sync()
        patient = self.projection.identity(patient_id)
        if patient is None or patient.kind != "PATIENT":
            raise NotFound(f"patient {patient_id} is not a registered patient")
        practitioner = self.projection.identity(caller.subject) or IdentityFacts(caller.subject, caller.kind, False)
        now = self.clock()
        command = domain.InvokeBreakGlass(
            break_glass_id=new_event_id(), practitioner=practitioner, organization_id=organization_id,
            justification_sha256=hashlib.sha256(text.encode()).digest(),
            valid_until=now + timedelta(seconds=self.settings.break_glass_ttl_s),
        )
        (event,) = domain.decide(self._state(patient_id), command)
        env = envelope(event, aggregate_id=patient_id, producer=SERVICE, actor=caller.subject, occurred_at=now)
        assert isinstance(event, consent_pb2.BreakGlassInvoked)
        stored = domain.break_glass_record(event, env.event_id, domain.utc(env.occurred_at))

        async def keep_justification(conn: Conn) -> None:
            await store.insert_break_glass(conn, stored, text)

        await self._record_envelopes([env], also=keep_justification)
        return stored, text

    # ---- representatives ----

    async def register_representative(self, caller: Caller, patient_id: str, representative_id: str) -> None:
        await self._representation(caller, patient_id, representative_id, register=True)

    async def end_representation(self, caller: Caller, patient_id: str, representative_id: str) -> None:
        await self._representation(caller, patient_id, representative_id, register=False)

    async def _representation(self, caller: Caller, patient_id: str, representative_id: str, register: bool) -> None:
        if not patient_id or not representative_id:
            raise InvalidArgument("patient_id and representative_id are required")
        await self.stream.sync()
        identity = self.ports.identity()
        patient = await identity.facts(patient_id)
        domain.require_patient(patient)
        command: domain.Command
        if register:
            command = domain.RegisterRepresentative(await identity.facts(representative_id), patient, caller.subject)
        else:
            command = domain.EndRepresentation(representative_id, patient, caller.subject)
        await self._record(domain.decide(self._state(patient_id), command), actor=caller.subject)

