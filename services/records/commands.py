"""Carrying out the records service's commands: gather the facts (projection,
database, the signer's keys as projected from identity.events), let the domain decide, then store the change and
its signed event atomically (the outbox, docs/architecture.md, Outbox): a
record version in one guarded statement when the patient's data key exists,
else, like the other commands, in one transaction. Every check runs before
the write, so a refused command stores and publishes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

import asyncpg

from medledger.records import crypto, domain, resource, store
from medledger.records.domain import RecordHead, WriteGrant
from medledger.records.projection import RecordsProjection
from medledger.records.settings import RecordsSettings
from medledger.runtime.auth import Caller
from medledger.runtime.envelope import envelope, new_event_id
from medledger.runtime.errors import (
    AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted,
)
from medledger.runtime.outbox import Conn, Outbox, OutboxRelay
from medledger.runtime.signed import SigningKey, parse_canonical, require_signature_shape, verify_statement
from medledger.v1 import events_pb2
from medledger.v1 import records_pb2 as pb

log = logging.getLogger(__name__)
SERVICE = "records"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Ports:
    """The live dependencies, reachable once the host connected them."""

    pool: Callable[[], asyncpg.Pool]
    outbox: Outbox
    relay: Callable[[], OutboxRelay]


@dataclass(frozen=True)
class Submission:
    """A write as submitted, checked on its own (no state yet)."""

    encoded: bytes
    attestation: pb.RecordAttestation
    signed_at: datetime
    signature: bytes
    resource: resource.Resource
    salt: bytes


def check_submission(
    encoded: bytes, resource_json: str, salt: bytes, signature: bytes, caller: Caller, now: datetime,
    skew: timedelta, creating: bool,
) -> Submission:
    """Size first (RESOURCE_EXHAUSTED), then the attestation, the caller, the
    FHIR resource, its subject and the commitment (INVALID_ARGUMENT,
    PERMISSION_DENIED)."""
    if len(resource_json) > resource.MAX_RESOURCE_BYTES:
        raise ResourceExhausted(f"resource_json exceeds {resource.MAX_RESOURCE_BYTES} bytes (4 MiB)")
    require_signature_shape(signature, "author_signature")
    att = parse_canonical(pb.RecordAttestation, encoded, "attestation")
    signed_at = domain.validate_attestation(att, now, skew, creating)
    if len(salt) != resource.SALT_BYTES:
        raise InvalidArgument(f"salt must be {resource.SALT_BYTES} random bytes")
    if att.author_id != caller.subject:
        raise PermissionDenied("the attestation's author must be the caller")
    parsed = resource.parse(resource_json)
    resource.require_identity(parsed, att.record_id, att.patient_id, att.category)
    if resource.commitment(salt, parsed.canonical) != att.commitment:
        raise InvalidArgument("attestation.commitment is not SHA-256(salt || RFC 8785 canonical resource)")
    return Submission(encoded, att, signed_at, signature, parsed, salt)


class RecordsCommands:
    def __init__(
        self, settings: RecordsSettings, projection: RecordsProjection, ports: Ports,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.projection = projection
        self.ports = ports
        self.clock = clock
        self.skew = timedelta(seconds=settings.signing_skew_s)

    # ---- writes ----

    async def create(self, caller: Caller, request: pb.CreateRecordRequest) -> pb.RecordReceipt:
        sub = check_submission(request.attestation, request.resource_json, request.salt, request.author_signature,
                               caller, self.clock(), self.skew, creating=True)
        return await self._write(sub, None)

    async def amend(self, caller: Caller, request: pb.AmendRecordRequest) -> pb.RecordReceipt:
        sub = check_submission(request.attestation, request.resource_json, request.salt, request.author_signature,
                               caller, self.clock(), self.skew, creating=False)
        async with self.ports.pool().acquire() as conn:
            head = await store.head(conn, sub.attestation.record_id)
        if head is None:
            raise NotFound(f"record {sub.attestation.record_id} does not exist")
        return await self._write(sub, head)

    async def _authorize(self, sub: Submission, head: RecordHead | None) -> tuple[WriteGrant, store.WrappedKey | None]:
        """The author's key comes with the other facts, from the projection
        synced to the log end (so a key revoked before the write arrived is
        seen revoked); it is looked at only after every earlier check passed.
        Also returns the patient's wrapped data key as it stood (no lock)."""
        att = sub.attestation
        await self.projection.sync(self.settings.sync_wait_s)
        async with self.ports.pool().acquire() as conn:
            known = await store.command_facts(conn, att.patient_id, att.author_id, att.record_id)
        grant = domain.authorize_write(known.party, att.organization_id, att.patient_id, known.patient, self.clock())
        if head is not None:
            domain.check_amendment(att, head)
        if head is None and known.record_taken:
            raise AlreadyExists(f"record {att.record_id} already exists")
        key = _signing_key(known, att.author_id, att.author_key_id, sub.signed_at, "author")
        verify_statement(key, sub.signed_at, domain.ATTESTATION_PREFIX + sub.encoded, sub.signature,
                         "author signature")
        return grant, known.data_key

    async def _write(self, sub: Submission, head: RecordHead | None) -> pb.RecordReceipt:
        grant, wrapped = await self._authorize(sub, head)
        att = sub.attestation
        now = self.clock()
        event_cls = pb.RecordCreated if head is None else pb.RecordAmended
        event = event_cls(attestation=att, author_signature=sub.signature, basis=grant.basis,
                          consent_id=grant.consent_id, break_glass_id=grant.break_glass_id)
        env = envelope(event, aggregate_id=att.patient_id, producer=SERVICE, actor=att.author_id, occurred_at=now)
        created = None if head is not None else RecordHead(
            att.record_id, att.patient_id, att.category, att.organization_id, 1, att.commitment, now)
        pool = self.ports.pool()
        if not await self._write_at_once(sub, created, wrapped, env, now):
            async with pool.acquire() as conn, conn.transaction():
                stored = self._version(sub, await self._data_key(conn, att.patient_id), env, now)
                if created is not None:
                    if not await store.insert_record(conn, created, stored):
                        raise AlreadyExists(f"record {att.record_id} already exists")
                else:
                    current = await store.head(conn, att.record_id, lock=True)
                    assert current is not None
                    domain.check_amendment(att, current)
                    await store.insert_version(conn, stored)
                await self.ports.outbox.enqueue(conn, env)
        await self.ports.relay().wait_published([env.event_id], pool, self.settings.publish_wait_s)
        log.info("record version stored", extra={"record_id": att.record_id, "version": att.version, "event_id": env.event_id})
        return pb.RecordReceipt(record_id=att.record_id, version=att.version, commitment=att.commitment,
                                event_id=env.event_id, recorded_at=domain.timestamp(now), basis=grant.basis)

    async def _write_at_once(self, sub: Submission, created: RecordHead | None, wrapped: store.WrappedKey | None,
                             env: events_pb2.EventEnvelope, now: datetime) -> bool:
        """The common write (the patient's data key exists): the version and
        its event in one statement, guarded by the wrapped key the payload is
        sealed under, instead of a transaction's five round trips. False when
        it wrote nothing (no key yet, erased or rewrapped meanwhile, record id
        taken, another amendment first): the transaction then decides, and
        raises the exact error."""
        wrapper = self.settings.key_wrapper
        if wrapped is None or wrapped.kek_id != wrapper.key_id:
            return False
        att = sub.attestation
        data_key = wrapper.unwrap(wrapped.wrapped_key, crypto.data_key_context(att.patient_id))
        async with self.ports.pool().acquire() as conn:
            return await store.write_at_once(conn, att.patient_id, created, self._version(sub, data_key, env, now),
                                             wrapped.wrapped_key, self.ports.outbox.seal(env))

    @staticmethod
    def _version(sub: Submission, data_key: bytes, env: events_pb2.EventEnvelope, now: datetime) -> store.StoredVersion:
        """The version as stored: its payload (salt and canonical resource) sealed under the patient's data key."""
        att = sub.attestation
        sealed = crypto.seal_payload(data_key, att.patient_id, att.record_id, att.version,
                                     crypto.Payload(sub.salt, sub.resource.canonical))
        return store.StoredVersion(att.record_id, att.version, att.author_id, sub.encoded, sub.signature,
                                   att.commitment, sealed, now, env.event_id, None)

    async def _data_key(self, conn: Conn, patient_id: str) -> bytes:
        """The patient's data key, created on their first record; the row is
        share-locked until the transaction ends, so an erasure (which locks it
        for update) cannot interleave, while the patient's writes do not wait
        for each other."""
        wrapper = self.settings.key_wrapper
        context = crypto.data_key_context(patient_id)
        key = await store.patient_key(conn, patient_id, lock="SHARE")
        if key is None:
            await store.add_patient_key(conn, patient_id, wrapper.key_id, wrapper.wrap(crypto.new_data_key(), context))
            key = await store.patient_key(conn, patient_id, lock="SHARE")
            assert key is not None
        if key.erased_at is not None or key.wrapped_key is None:
            raise FailedPrecondition(f"patient {patient_id} erased their data at {key.erased_at}")
        if key.kek_id != wrapper.key_id:
            raise FailedPrecondition(f"the patient's data key is wrapped by {key.kek_id}, this service holds {wrapper.key_id}")
        return wrapper.unwrap(key.wrapped_key, context)

    # ---- erasure ----

    async def erase(self, caller: Caller, encoded: bytes, signature: bytes) -> pb.ErasePatientDataResponse:
        require_signature_shape(signature, "signature")
        request = parse_canonical(pb.ErasureRequest, encoded, "request")
        signed_at = domain.validate_erasure(request, self.clock(), self.skew)
        await self.projection.sync(self.settings.sync_wait_s)
        async with self.ports.pool().acquire() as conn:
            known = await store.command_facts(conn, request.patient_id, request.signer_id)
        facts, signer = known.patient, known.party
        domain.require_patient(facts, request.patient_id)
        if request.signer_id != request.patient_id and request.signer_id not in facts.representatives:
            raise PermissionDenied("only the patient or an active representative signs an erasure")
        if signer is None or not signer.active:
            raise PermissionDenied(f"signer {request.signer_id} is not an active identity")
        key = _signing_key(known, request.signer_id, request.signer_key_id, signed_at, "signer")
        verify_statement(key, signed_at, domain.ERASURE_PREFIX + encoded, signature, "erasure signature")
        return await self._erase(caller, request, signature)

    async def _erase(self, caller: Caller, request: pb.ErasureRequest, signature: bytes) -> pb.ErasePatientDataResponse:
        patient_id = request.patient_id
        now = self.clock()
        pool = self.ports.pool()
        async with pool.acquire() as conn, conn.transaction():
            await store.add_patient_key(conn, patient_id, self.settings.key_wrapper.key_id, None)
            key = await store.patient_key(conn, patient_id, lock="UPDATE")
            assert key is not None
            if key.erased_at is not None:
                return _erasure_answer(patient_id, key.erasure_id or "", key.erased_at, key.erasure_event_id or "",
                                       key.versions_erased or 0)
            event_id = new_event_id()
            erased = await store.erase_patient(conn, patient_id, request.erasure_id, event_id, now)
            event = pb.PatientDataErased(request=request, signature=signature, submitted_by=caller.subject,
                                         versions_erased=erased)
            env = envelope(event, aggregate_id=patient_id, producer=SERVICE, actor=caller.subject, event_id=event_id,
                           occurred_at=now)
            await self.ports.outbox.enqueue(conn, env)
        await self.ports.relay().wait_published([event_id], pool, self.settings.publish_wait_s)
        log.info("patient data erased", extra={"patient_id": patient_id, "event_id": event_id, "versions": erased})
        return _erasure_answer(patient_id, request.erasure_id, now, event_id, erased)

    # ---- research artifacts ----

    async def register_artifact(self, caller: Caller, request: pb.RegisterResearchArtifactRequest) -> store.StoredArtifact:
        domain.validate_artifact(request.trial_id, request.kind, request.sha256)
        await self.projection.sync(self.settings.sync_wait_s)
        pool = self.ports.pool()
        async with pool.acquire() as conn:
            requested = request.organization_id or (caller.subject if caller.kind == "ORGANIZATION" else "")
            organization = await store.party(conn, requested) if requested else None
            member_of = await store.organizations(conn, caller.subject)
        organization_id = domain.research_organization(
            caller.subject, caller.kind, request.organization_id, organization, member_of
        )
        now = self.clock()
        artifact_id = new_event_id()
        event = pb.ResearchArtifactRegistered(
            artifact_id=artifact_id, trial_id=request.trial_id, kind=request.kind, sha256=request.sha256,
            organization_id=organization_id, registered_by=caller.subject,
        )
        env = envelope(event, aggregate_id=request.trial_id, producer=SERVICE, actor=caller.subject, occurred_at=now)
        stored = store.StoredArtifact(artifact_id, request.trial_id, request.kind, request.sha256, organization_id,
                                      caller.subject, now, env.event_id)
        async with pool.acquire() as conn, conn.transaction():
            if await store.lock_trial(conn, request.trial_id) >= domain.MAX_TRIAL_ARTIFACTS:
                raise ResourceExhausted(f"trial {request.trial_id} holds {domain.MAX_TRIAL_ARTIFACTS} registrations already")
            await store.insert_artifact(conn, stored)
            await self.ports.outbox.enqueue(conn, env)
        await self.ports.relay().wait_published([env.event_id], pool, self.settings.publish_wait_s)
        return stored


def _signing_key(known: store.CommandFacts, identity_id: str, key_id: str, at: datetime, role: str) -> SigningKey:
    """The signer's key as identity's ResolveKey would answer, from the facts
    read after the sync; PERMISSION_DENIED if the identity never had it."""
    try:
        return domain.resolve_key(identity_id, known.party is not None, known.keys, key_id, at)
    except NotFound:
        raise PermissionDenied(f"key {key_id} is not a key of {role} {identity_id}") from None


def _erasure_answer(patient_id: str, erasure_id: str, at: datetime, event_id: str, versions: int) -> pb.ErasePatientDataResponse:
    return pb.ErasePatientDataResponse(patient_id=patient_id, erasure_id=erasure_id, erased_at=domain.timestamp(at),
                                       event_id=event_id, versions_erased=versions)
