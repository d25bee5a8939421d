"""Support for the audit tooling's tests on the real stack: a history built
through the services themselves (identity, consent, records, ledger as
processes), copies of its ledger database to tamper with, and the
``medledger audit`` command run as an auditor runs it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Sequence

import asyncpg
import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medledger.client import Connection, Endpoints, Purpose, raw_public_key
from medledger.ledger.note import NoteSigner
from medledger.runtime.postgres import connect, drop_database, with_database
from medledger.runtime.settings import Topics
from medledger.testing.consent import read_topic
from medledger.testing.identity import IdentityHarness, Party
from medledger.testing.ledger import stub as ledger_stub
from medledger.testing.ledger import wait_for_checkpoint
from medledger.testing.stack import MEDLEDGER, ServiceProcess, free_port, unique
from medledger.v1 import consent_pb2 as cpb
from medledger.v1 import consent_pb2_grpc, events_pb2, identity_pb2

JUSTIFICATION = "unconscious on arrival, allergies unknown"


@dataclass
class History:
    """What was done, as the services answered it."""

    patient_id: str = ""
    record_id: str = ""
    revoked_consent_id: str = ""
    consent_ids: list[str] = field(default_factory=list)
    decision_event_ids: list[str] = field(default_factory=list)  # direct CheckAccess answers
    disclosure_event_ids: list[str] = field(default_factory=list)
    record_event_ids: list[str] = field(default_factory=list)
    break_glass_id: str = ""
    erasure_event_id: str = ""
    record_proof: bytes = b""  # the ProofBundle the records service served with a read


@dataclass
class AuditedStack:
    env: dict[str, str]
    topics: Topics
    identity: IdentityHarness
    run_dir: Path
    history: History
    ledger_database: str = ""
    size: int = 0
    auditor: Party | None = None  # registered once: new registrations would grow the audited log
    processes: list[ServiceProcess] = field(default_factory=list)

    @property
    def verifier_key_file(self) -> Path:
        path = self.run_dir / "ledger.pub"
        if not path.exists():
            signer = NoteSigner.from_signer_key(Path(self.env["MEDLEDGER_LEDGER_SIGNING_KEY_FILE"]).read_text())
            path.write_text(signer.verifier_key + "\n")
        return path

    @property
    def producer_keys_file(self) -> str:
        return self.env["MEDLEDGER_EVENT_PRODUCER_KEYS_FILE"]

    def auditor_token(self) -> str:
        """A fresh token of the one auditor (a login adds no event)."""
        if self.auditor is None:
            self.auditor = self.identity.auditor()
            return self.auditor.token
        return self.identity.login(self.auditor).token

    def spawn(self, name: str, **overrides: str) -> ServiceProcess:
        env = dict(self.env, **overrides)
        port = int(env[f"MEDLEDGER_{name.upper()}_PORT"])
        proc = ServiceProcess(name, env, port, self.run_dir / f"{name}-{len(self.processes)}.log").start()
        self.processes.append(proc)
        return proc


def build_history(stack: AuditedStack, consent: ServiceProcess, records: ServiceProcess, ledger: ServiceProcess) -> None:
    """Registrations, a record written and amended, a refused read, a grant
    and the read it allows, a revocation, a key rotation and a consent signed
    with the new key, a break-glass read and its review, an erasure: every
    kind of event and signature the auditor checks, through the services."""
    h, harness = stack.history, stack.identity
    endpoints = Endpoints(harness.address, consent.address, records.address, ledger.address)
    consent_stub = consent_pb2_grpc.ConsentServiceStub(grpc.insecure_channel(consent.address))
    with Connection(endpoints) as connection:
        org_a, org_b, org_c = harness.organization(), harness.organization(), harness.organization()
        dr_a, dr_b, dr_c = (harness.practitioner(org) for org in (org_a, org_b, org_c))
        patient_key = Ed25519PrivateKey.generate()
        hospital_a = connection.login(org_a.identity_id, org_a.private_key)
        h.patient_id = hospital_a.identity.register_patient(raw_public_key(patient_key)).identity_id
        patient = harness.login(Party(h.patient_id, "PATIENT", patient_key))
        as_patient = connection.login(h.patient_id, patient_key)
        writer = connection.login(dr_a.identity_id, dr_a.private_key)
        reader = connection.login(dr_b.identity_id, dr_b.private_key)
        created = writer.records.create(h.patient_id, _observation(h.patient_id, 72), organization_id=org_a.identity_id)
        h.record_id = created.record_id
        h.record_event_ids.append(created.event_id)
        def b_reads() -> object:
            return reader.records.get(h.record_id, purpose=Purpose.TREATMENT, organization_id=org_b.identity_id)

        _refused(b_reads)
        granted = as_patient.consent.grant(as_patient.consent.terms(org_b.identity_id, [Purpose.TREATMENT]))
        h.revoked_consent_id = granted.terms.consent_id
        h.consent_ids.append(granted.terms.consent_id)
        read = _proved(b_reads, h.disclosure_event_ids)
        h.record_proof = read.proof.SerializeToString()
        h.decision_event_ids.append(reader.consent.check_access(h.patient_id, Purpose.TREATMENT, category="Observation").decision_event_id)
        as_patient.consent.revoke(granted.terms.consent_id)
        h.decision_event_ids.append(reader.consent.check_access(h.patient_id, Purpose.TREATMENT, category="Observation").decision_event_id)
        amended = writer.records.amend(read.record, _observation(h.patient_id, 75))
        h.record_event_ids.append(amended.event_id)
        # the patient rotates their key and signs a new consent with it
        new_key = Ed25519PrivateKey.generate()
        harness.stub.RotateKey(identity_pb2.RotateKeyRequest(identity_id=h.patient_id, public_key=raw_public_key(new_key)),
                               metadata=patient.metadata, timeout=15)
        as_patient = connection.login(h.patient_id, new_key)
        second = as_patient.consent.grant(as_patient.consent.terms(org_a.identity_id, [Purpose.OPERATIONS]))
        h.consent_ids.append(second.terms.consent_id)
        # break-glass by a practitioner of a hospital with no consent, and its review
        glass = consent_stub.InvokeBreakGlass(cpb.InvokeBreakGlassRequest(
            patient_id=h.patient_id, justification=JUSTIFICATION, organization_id=org_c.identity_id,
            reason=cpb.BREAK_GLASS_REASON_PATIENT_UNABLE_TO_CONSENT,
        ), metadata=dr_c.metadata, timeout=15)
        h.break_glass_id = glass.break_glass_id
        emergency = connection.login(dr_c.identity_id, dr_c.private_key)
        _proved(lambda: emergency.records.get(h.record_id, purpose=Purpose.EMERGENCY, organization_id=org_c.identity_id),
                h.disclosure_event_ids)
        consent_stub.ReviewBreakGlass(cpb.ReviewBreakGlassRequest(
            break_glass_id=glass.break_glass_id, outcome=cpb.REVIEW_STATUS_APPROVED, note="reviewed with the ward",
        ), metadata=harness.auditor().metadata, timeout=15)
        h.erasure_event_id = as_patient.records.erase().event_id


def _observation(patient_id: str, value: int) -> dict[str, object]:
    return {
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": f"Patient/{patient_id}"}, "effectiveDateTime": "2026-11-30T09:30:00Z",
        "valueQuantity": {"value": value, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"},
    }


def _refused(call: Callable[[], object]) -> None:
    from medledger.runtime.errors import PermissionDenied

    try:
        call()
    except PermissionDenied:
        return
    raise AssertionError("the read was expected to be refused")


def _proved(call: Callable[[], Any], disclosed: list[str]) -> Any:
    """A read answered once its version is on the ledger; every attempt
    disclosed the record, so each one's disclosure events are kept."""
    from medledger.v1 import records_pb2

    deadline = time.monotonic() + 60
    while True:
        reply = call()
        disclosed += reply.disclosure_event_ids
        if reply.proof_status == records_pb2.PROOF_INCLUDED:
            return reply
        assert time.monotonic() < deadline, "the record's event never reached the ledger"
        time.sleep(0.2)


async def event_topic_envelopes(topics: Topics) -> list[events_pb2.EventEnvelope]:
    found: list[events_pb2.EventEnvelope] = []
    for topic in topics.event_topics:
        found += await read_topic(topic)
    return found


async def wait_sequenced(stack: AuditedStack, address: str) -> int:
    """The ledger's size once it sequenced every record on the event topics
    (counted again until no more arrive: some are published after the reply)."""
    channel, ledger = ledger_stub(address)
    with channel:
        total = -1
        while True:
            counted = len(await event_topic_envelopes(stack.topics))
            size = int(wait_for_checkpoint(ledger, counted, timeout=120).tree_size)
            if counted == total and size == counted:
                return size
            total = counted
            await asyncio.sleep(0.5)


async def wait_records_indexed(records_database: str, topics: Topics, bootstrap: str, timeout: float = 60) -> None:
    """Until the records service's projection and disclosure index have read
    every event now on the topics they follow (what replay's settling checks)."""
    from medledger.audit.replay import records_behind
    from medledger.runtime.consumer import PositionedConsumer

    async with PositionedConsumer(bootstrap, topics.event_topics) as consumer:
        await consumer.start()
        deadline = time.monotonic() + timeout
        while True:
            conn = await connect(records_database)
            try:
                behind = await records_behind(conn, topics, consumer)
            finally:
                await conn.close()
            if not behind:
                return
            assert time.monotonic() < deadline, "; ".join(behind)
            await asyncio.sleep(0.2)


async def wait_mirrored(consent_database: str, topic: str, timeout: float = 60) -> None:
    """Until the consent service's copy of consents holds every consent.events record."""
    expected = len(await read_topic(topic))
    deadline = time.monotonic() + timeout
    while True:
        conn = await connect(consent_database)
        try:
            done = await conn.fetchval("SELECT count(*) FROM applied_events WHERE topic = $1", topic)
        finally:
            await conn.close()
        if done >= expected:
            return
        assert time.monotonic() < deadline, f"the consent mirror holds {done} of {expected} events"
        await asyncio.sleep(0.2)


@asynccontextmanager
async def ledger_copy(stack: AuditedStack) -> AsyncIterator[str]:
    """A copy of the history's ledger database (its URL), to tamper with and
    serve with ``serve_ledger``; dropped afterwards."""
    name = unique("audit_copy")
    url = with_database(stack.ledger_database, name)
    original = stack.ledger_database.rsplit("/", 1)[1]
    admin = await connect(with_database(stack.ledger_database, "postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{original}"')
    finally:
        await admin.close()
    try:
        yield url
    finally:
        await drop_database(url)


def serve_ledger(stack: AuditedStack, database_url: str, signing_key: Path | None = None) -> ServiceProcess:
    overrides = {"MEDLEDGER_LEDGER_DATABASE_URL": database_url, "MEDLEDGER_LEDGER_PORT": str(free_port())}
    if signing_key is not None:
        overrides["MEDLEDGER_LEDGER_SIGNING_KEY_FILE"] = str(signing_key)
    return stack.spawn("ledger", **overrides).wait_serving()


@dataclass(frozen=True)
class AuditRun:
    code: int
    stdout: str
    stderr: str

    @property
    def report(self) -> dict[str, Any]:
        report: dict[str, Any] = json.loads(self.stdout)
        return report


def audit(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> AuditRun:
    """``medledger audit ARGS`` as an auditor runs it, in a separate process."""
    done = subprocess.run([MEDLEDGER, "audit", *args], capture_output=True, text=True, env=env, timeout=timeout)
    return AuditRun(done.returncode, done.stdout, done.stderr)


async def execute(database_url: str, statements: Sequence[tuple[str, tuple[object, ...]]]) -> None:
    """Tamper: run statements directly against a database, in one transaction."""
    conn: asyncpg.Connection = await connect(database_url)
    try:
        async with conn.transaction():
            for sql, args in statements:
                await conn.execute(sql, *args)
    finally:
        await conn.close()
