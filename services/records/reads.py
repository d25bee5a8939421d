"""Serving reads: who may read what (domain.own_basis, else the consent
service's CheckAccess asked with the reader's own token), decrypting what
may be served, proving it (the ledger's ProofBundle) and recording the
disclosure before answering.

Every read that serves content commits its RecordsDisclosed events to the
disclosure outbox (access.events) in one transaction and only then answers:
a served read is always accounted for, even if the process dies right after.
A read that may not see a record, or asks for one that does not exist, gets
the same PERMISSION_DENIED; lists simply leave out what the caller may not
read, so a denial reveals nothing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Awaitable, Callable, Sequence

import asyncpg

from medledger.records import crypto, domain, store, views
from medledger.records.crypto import Payload
from medledger.records.domain import Grounds, PurposeCode, Reader, RecordHead
from medledger.records.peers import AccessGate, Metadata, Prover, discard
from medledger.records.settings import RecordsSettings
from medledger.records.store import StoredVersion
from medledger.runtime.auth import Caller
from medledger.runtime.envelope import envelope, new_event_id
from medledger.runtime.errors import OutOfRange, PermissionDenied, ResourceExhausted
from medledger.runtime.outbox import Conn, Outbox
from medledger.v1 import consent_pb2, events_pb2, ledger_pb2, records_pb2 as pb

log = logging.getLogger(__name__)
SERVICE = "records"
MAX_CATEGORIES = 20


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def denied(record_id: str) -> PermissionDenied:
    return PermissionDenied(f"no record {record_id} this caller may read for this purpose")


@dataclass
class ReadPorts:
    pool: Callable[[], asyncpg.Pool]
    gate: AccessGate
    prover: Callable[[], Prover]
    disclosures: Outbox


@dataclass(frozen=True)
class Served:
    """Records a read serves, with the grounds of each."""

    items: list[tuple[Grounds, RecordHead, StoredVersion]]
    erased_at: datetime | None


class Authorizer:
    """Decides, record by record, whether one reader may read a patient's
    records, asking consent at most once per category (and per record only
    for records a consent lists by id)."""

    def __init__(self, gate: AccessGate, authorization: Metadata, reader: Reader, patient_id: str,
                 representatives: frozenset[str], record_scoped: frozenset[str]) -> None:
        self.gate = gate
        self.authorization = authorization
        self.reader = reader
        self.patient_id = patient_id
        self.representatives = representatives
        self.record_scoped = record_scoped
        self._by_category: dict[str, Grounds | None] = {}

    async def grounds(self, head: RecordHead, by_record: bool = False) -> Grounds | None:
        basis = domain.own_basis(self.reader, self.patient_id, self.representatives, head.custodian_id)
        if basis is not None:
            return Grounds(basis)
        if self.reader.kind != "PRACTITIONER":
            return None
        if by_record:
            return await self._ask(head.category, head.record_id)
        if head.category not in self._by_category:
            self._by_category[head.category] = await self._ask(head.category, "")
        found = self._by_category[head.category]
        if found is None and head.record_id in self.record_scoped:
            return await self._ask(head.category, head.record_id)
        return found

    async def _ask(self, category: str, record_id: str) -> Grounds | None:
        decision = await self.gate.check(self.authorization, self.patient_id, self.reader.purpose, category, record_id)
        if decision.decision != consent_pb2.DECISION_ALLOW:
            return None
        return Grounds(domain.decision_basis(decision.reason), decision.consent_id, decision.break_glass_id,
                       decision.decision_event_id)


class RecordsReads:
    def __init__(self, settings: RecordsSettings, ports: ReadPorts, clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.ports = ports
        self.clock = clock

    async def _reader(self, conn: Conn, caller: Caller, purpose: PurposeCode, organization_id: str) -> Reader:
        organizations = await store.organizations(conn, caller.subject) if caller.kind == "PRACTITIONER" else frozenset()
        reader = Reader(caller.subject, caller.kind, purpose, organization_id, organizations)
        domain.check_reader(reader)
        return reader

    async def _authorizer(self, conn: Conn, reader: Reader, patient_id: str, authorization: Metadata) -> Authorizer:
        consents = await store.consents(conn, patient_id)
        return Authorizer(self.ports.gate, authorization, reader, patient_id,
                          await store.representatives(conn, patient_id), domain.record_scoped(consents, self.clock()))

    async def _payloads(self, conn: Conn, patient_id: str, versions: Sequence[StoredVersion]) -> tuple[dict[tuple[str, int], Payload], datetime | None]:
        """Decrypted payloads by (record, version); none once the patient erased their data."""
        return self._open(patient_id, await store.patient_key(conn, patient_id), versions)

    def _open(self, patient_id: str, key: store.PatientKey | None, versions: Sequence[StoredVersion]) -> tuple[dict[tuple[str, int], Payload], datetime | None]:
        if key is None or key.erased_at is not None or key.wrapped_key is None:
            return {}, key.erased_at if key else None
        wrapper = self.settings.key_wrapper
        data_key = wrapper.unwrap(key.wrapped_key, crypto.data_key_context(patient_id))
        return {
            (v.record_id, v.version): crypto.open_payload(data_key, patient_id, v.record_id, v.version, v.sealed)
            for v in versions if v.sealed is not None
        }, None

    async def _disclose(self, reader: Reader, patient_id: str, operation: str, served: Served,
                        conn: Conn | None = None) -> list[str]:
        """Commit the RecordsDisclosed events; their ids."""
        events = [] if served.erased_at is not None else views.disclosures(
            new_event_id(), reader, patient_id, operation, served.items
        )
        envs = [envelope(e, aggregate_id=patient_id, producer=SERVICE, actor=reader.identity_id) for e in events]
        if envs and conn is not None:
            await self._commit(conn, envs)
        elif envs:
            async with self.ports.pool().acquire() as own:
                await self._commit(own, envs)
        return [env.event_id for env in envs]

    async def _commit(self, conn: Conn, envs: Sequence[events_pb2.EventEnvelope]) -> None:
        """The disclosures atomically (one event is one statement, already
        atomic; several take a transaction)."""
        if len(envs) == 1:
            await self.ports.disclosures.enqueue(conn, envs[0])
        else:
            async with conn.transaction():
                for env in envs:
                    await self.ports.disclosures.enqueue(conn, env)

    # ---- GetRecord / GetRecordHistory ----

    async def _record(self, conn: Conn, caller: Caller, authorization: Metadata, record_id: str, purpose: PurposeCode,
                      organization_id: str) -> tuple[Reader, RecordHead, Authorizer]:
        """The reader, the record's head and who may read it, from one query."""
        facts = await store.read_facts(conn, caller.subject if caller.kind == "PRACTITIONER" else "", record_id)
        reader = Reader(caller.subject, caller.kind, purpose, organization_id, facts.organizations)
        domain.check_reader(reader)
        if facts.head is None:
            raise denied(record_id)
        authorizer = Authorizer(self.ports.gate, authorization, reader, facts.head.patient_id, facts.representatives,
                                domain.record_scoped(facts.consents, self.clock()))
        return reader, facts.head, authorizer

    async def _one(self, caller: Caller, authorization: Metadata, record_id: str, purpose: PurposeCode,
                   organization_id: str) -> tuple[Reader, RecordHead, Grounds]:
        async with self.ports.pool().acquire() as conn:
            reader, head, authorizer = await self._record(conn, caller, authorization, record_id, purpose,
                                                          organization_id)
        grounds = await authorizer.grounds(head, by_record=True)
        if grounds is None:
            raise denied(record_id)
        return reader, head, grounds

    async def _material(self, conn: Conn, head: RecordHead, number: int) -> tuple[StoredVersion, store.PatientKey | None, ledger_pb2.ProofBundle | None]:
        """A version, its patient's data key row and its proof: fetched while
        consent decides, opened only once it allowed."""
        version, key = await store.version_and_key(conn, head.record_id, number, head.patient_id)
        assert version is not None
        return version, key, await self.ports.prover().prove(version.event_id)

    async def get(self, caller: Caller, authorization: Metadata, request: pb.GetRecordRequest) -> pb.GetRecordResponse:
        """One connection for the whole read (three round trips: facts,
        version with key, disclosure); the version and its proof are fetched
        while consent decides, and nothing is opened or disclosed before it
        allowed."""
        async with self.ports.pool().acquire() as conn:
            reader, head, authorizer = await self._record(conn, caller, authorization, request.record_id,
                                                          request.purpose, request.organization_id)
            number = request.version or head.latest_version
            material = asyncio.ensure_future(self._material(conn, head, number)) if number <= head.latest_version else None
            try:
                grounds = await authorizer.grounds(head, by_record=True)
            except BaseException:
                await discard(material)
                raise
            if grounds is None:
                await discard(material)
                raise denied(request.record_id)
            if material is None:
                raise OutOfRange(f"record {head.record_id} has {head.latest_version} versions")
            version, key, proof = await material
            payloads, erased_at = self._open(head.patient_id, key, [version])
            served = Served([(grounds, head, version)], erased_at)
            disclosure_ids = await self._disclose(reader, head.patient_id, "GetRecord", served, conn)
        record = views.record_message(head, version, payloads.get((head.record_id, number)), erased_at)
        response = pb.GetRecordResponse(record=record, disclosure_event_ids=disclosure_ids,
                                        proof_status=pb.PROOF_PENDING)
        if proof is not None:
            response.proof_status = pb.PROOF_INCLUDED
            response.proof.CopyFrom(proof)
            response.record.ledger_index = proof.entry.index
        return response

    async def history(self, caller: Caller, authorization: Metadata, request: pb.GetRecordHistoryRequest) -> pb.GetRecordHistoryResponse:
        reader, head, grounds = await self._one(caller, authorization, request.record_id, request.purpose,
                                                request.organization_id)
        first = domain.decode_version_token(request.page_token)
        size = domain.page_size(request.page_size, 20, 100)
        async with self.ports.pool().acquire() as conn:
            versions = await store.versions(conn, head.record_id, first, size + 1)
            page = versions[:size]
            payloads, erased_at = await self._payloads(conn, head.patient_id, page)
        served = Served([(grounds, head, v) for v in page], erased_at)
        disclosure_ids = await self._disclose(reader, head.patient_id, "GetRecordHistory", served)
        return pb.GetRecordHistoryResponse(
            versions=[views.record_message(head, v, payloads.get((v.record_id, v.version)), erased_at) for v in page],
            next_page_token=str(versions[size].version) if len(versions) > size else "",
            disclosure_event_ids=disclosure_ids,
        )

    # ---- ListPatientRecords / ExportPatientRecords ----

    async def _readable(
        self, caller: Caller, authorization: Metadata, patient_id: str, purpose: PurposeCode, organization_id: str,
        heads_of: Callable[[Conn], Awaitable[list[RecordHead]]], want: int | None,
    ) -> tuple[Reader, list[tuple[Grounds, RecordHead]], bool]:
        """The reader and up to ``want`` readable records (in the order given),
        and whether more readable ones follow."""
        async with self.ports.pool().acquire() as conn:
            reader = await self._reader(conn, caller, purpose, organization_id)
            heads = await heads_of(conn)
            authorizer = await self._authorizer(conn, reader, patient_id, authorization)
        readable: list[tuple[Grounds, RecordHead]] = []
        for head in heads:
            grounds = await authorizer.grounds(head)
            if grounds is None:
                continue
            if want is not None and len(readable) == want:
                return reader, readable, True
            readable.append((grounds, head))
        return reader, readable, False

    async def _served(self, patient_id: str, readable: Sequence[tuple[Grounds, RecordHead]]) -> tuple[Served, dict[tuple[str, int], Payload]]:
        async with self.ports.pool().acquire() as conn:
            latest = await store.latest_versions(conn, [h.record_id for _, h in readable])
            items = [(g, h, latest[h.record_id]) for g, h in readable]
            payloads, erased_at = await self._payloads(conn, patient_id, [v for _, _, v in items])
        return Served(items, erased_at), payloads

    async def list(self, caller: Caller, authorization: Metadata, request: pb.ListPatientRecordsRequest) -> pb.ListPatientRecordsResponse:
        domain.require_id(request.patient_id, "patient_id")
        if len(request.categories) > MAX_CATEGORIES:
            raise domain.InvalidArgument(f"at most {MAX_CATEGORIES} categories")
        cursor = domain.decode_cursor(request.page_token)
        size = domain.page_size(request.page_size, 50, 200)
        created_from = domain.utc(request.created_from) if request.HasField("created_from") else None
        created_until = domain.utc(request.created_until) if request.HasField("created_until") else None

        async def heads_of(conn: Conn) -> list[RecordHead]:
            return await store.heads(conn, request.patient_id, list(request.categories), created_from, created_until, cursor)

        reader, readable, more = await self._readable(caller, authorization, request.patient_id, request.purpose,
                                                      request.organization_id, heads_of, size)
        served, payloads = await self._served(request.patient_id, readable)
        disclosure_ids = await self._disclose(reader, request.patient_id, "ListPatientRecords", served)
        last = readable[-1][1] if readable and more else None
        return pb.ListPatientRecordsResponse(
            records=[views.record_message(h, v, payloads.get((h.record_id, v.version)), served.erased_at)
                     for _, h, v in served.items],
            next_page_token=domain.encode_cursor(domain.ListCursor(_micros(last.created_at), last.record_id)) if last else "",
            disclosure_event_ids=disclosure_ids,
        )

    async def export(self, caller: Caller, authorization: Metadata, request: pb.ExportPatientRecordsRequest) -> pb.ExportPatientRecordsResponse:
        domain.require_id(request.patient_id, "patient_id")

        async def heads_of(conn: Conn) -> list[RecordHead]:
            return list(reversed(await store.heads(conn, request.patient_id, [], None, None, None)))

        reader, readable, _ = await self._readable(caller, authorization, request.patient_id, request.purpose,
                                                   request.organization_id, heads_of, None)
        served, payloads = await self._served(request.patient_id, readable)
        if served.erased_at is not None:
            served = Served([], served.erased_at)
        entries = [(h, v, payloads[(h.record_id, v.version)]) for _, h, v in served.items]
        size = sum(len(p.canonical) for _, _, p in entries)
        if size > self.settings.max_export_bytes:
            raise ResourceExhausted(
                f"the export would exceed {self.settings.max_export_bytes} bytes: page with ListPatientRecords instead"
            )
        disclosure_ids = await self._disclose(reader, request.patient_id, "ExportPatientRecords", served)
        bundle = views.bundle_json(new_event_id(), self.clock(), entries)
        return pb.ExportPatientRecordsResponse(bundle_json=bundle, record_count=len(entries),
                                               disclosure_event_ids=disclosure_ids)


def _micros(at: datetime) -> int:
    return (at - domain.EPOCH) // timedelta(microseconds=1)
