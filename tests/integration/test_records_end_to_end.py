"""Issue 10's "Done when", written as a hospital integrator writes it: with
``medledger.client`` only, against identity, consent, ledger and records
running as real processes on the real Kafka and PostgreSQL.

Hospital A registers a patient (name, birth date, its medical record number)
and a practitioner there records an Observation carrying a marker string. A
practitioner at hospital B is denied and learns nothing; the patient grants
TREATMENT consent to hospital B; B's practitioner reads the record and
verifies its proof offline, trusting only pinned keys; the patient revokes;
B is denied again; the patient exports everything and then erases their
data. The ledger still verifies end to end, holds every one of those events,
and neither it, nor any topic, nor any service log holds the patient's name,
birth date, record number or the marker.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.observation import Observation
from google.protobuf.message import Message

from medledger.client import (
    ArtifactKind, Client, Connection, Demographics, Endpoints, Purpose, TrustAnchors, raw_public_key, verify_proof,
    verify_record,
)
from medledger.ledger.note import NoteSigner, open_checkpoint
from medledger.runtime import errors
from medledger.runtime.settings import Topics
from medledger.testing.consent import consent_env
from medledger.testing.identity import IdentityHarness, Party
from medledger.testing.records import observation, records_env
from medledger.testing.ledger import audit, consume_all, stub as ledger_stub, wait_for_checkpoint
from medledger.testing.stack import PRODUCERS, ServiceProcess, all_serving, wait_until
from medledger.v1 import consent_pb2, events_pb2, records_pb2

GIVEN, FAMILY, BIRTH_DATE = "Wilhelmina", "Quackenbush-Oyelaran", "1957-03-14"
MRN = f"MRN-{uuid.uuid4().hex[:10]}"
MARKER = f"phi-marker-{uuid.uuid4().hex}"
PHI = {"given name": GIVEN, "family name": FAMILY, "birth date": BIRTH_DATE, "record number": MRN, "marker": MARKER}


@dataclass
class Stack:
    connection: Connection
    identity: IdentityHarness
    anchors: TrustAnchors
    ledger_address: str
    topics: Topics
    logs: Path

    def login(self, party: Party) -> Client:
        return self.connection.login(party.identity_id, party.private_key)


@pytest.fixture
def stack(
    identity_service: IdentityHarness, spawn: Callable[..., ServiceProcess], service_env: dict[str, str],
    topics: Topics, tmp_path: Path,
) -> Iterator[Stack]:
    consent = spawn("consent", **consent_env(identity_service, tmp_path))
    ledger = spawn("ledger")
    records = spawn("records", **records_env(identity_service, tmp_path, service_env))
    all_serving(consent, ledger, records)
    # Pinned out of band: the ledger's verifier key from the operator's key
    # file, the producers' keys from the deployment's pinned file.
    checkpoint_key = NoteSigner.from_signer_key(Path(service_env["MEDLEDGER_LEDGER_SIGNING_KEY_FILE"]).read_text())
    anchors = TrustAnchors.from_texts(checkpoint_key.verifier_key, service_env["MEDLEDGER_LEDGER_ORIGIN"], PRODUCERS.keys_text)
    endpoints = Endpoints(identity_service.address, consent.address, records.address, ledger.address)
    with Connection(endpoints) as connection:
        yield Stack(connection, identity_service, anchors, ledger.address, topics, tmp_path)


def practitioner_of(stack: Stack, hospital: Client) -> Client:
    """The hospital's system registers a practitioner (whose key it holds
    for them) and makes them a member."""
    key = Ed25519PrivateKey.generate()
    doctor = hospital.identity.register_practitioner(raw_public_key(key))
    hospital.identity.grant_membership(doctor.identity_id, hospital.identity_id, "physician")
    return stack.connection.login(doctor.identity_id, key)


def proved_read(reader: Client, record_id: str, **how: object) -> records_pb2.GetRecordResponse:
    """GetRecord until the version's event is on the ledger (PROOF_PENDING until then)."""
    deadline = time.monotonic() + 30
    while True:
        reply = reader.records.get(record_id, **how)  # type: ignore[arg-type]
        if reply.proof_status == records_pb2.PROOF_INCLUDED:
            return reply
        assert time.monotonic() < deadline, "the record's event never reached the ledger"
        time.sleep(0.2)


def denial(call: Callable[[], object]) -> str:
    with pytest.raises(errors.PermissionDenied) as info:
        call()
    return str(info.value)


def reveals_nothing(detail: str) -> None:
    for what, value in PHI.items():
        assert value not in detail, f"an error message holds the patient's {what}"


async def test_a_record_shared_under_consent_from_registration_to_erasure(stack: Stack) -> None:
    # -- hospitals A and B (registered by the network operator) and their staff
    org_a, org_b = stack.identity.organization(), stack.identity.organization()
    hospital_a, hospital_b = stack.login(org_a), stack.login(org_b)
    dr_a, dr_b = practitioner_of(stack, hospital_a), practitioner_of(stack, hospital_b)

    # -- A registers the patient, whose own device holds the patient's key
    patient_key = Ed25519PrivateKey.generate()
    registered = hospital_a.identity.register_patient(
        raw_public_key(patient_key), medical_record_number=MRN,
        demographics=Demographics(given_name=GIVEN, family_name=FAMILY, birth_date=BIRTH_DATE),
    )
    patient_id = registered.identity_id
    assert hospital_a.identity.find_patient_by_mrn(MRN).identity_id == patient_id
    patient = stack.connection.login(patient_id, patient_key)

    # -- A's practitioner records an Observation, signed with their own key
    receipt = dr_a.records.create(patient_id, observation(patient_id, MARKER), organization_id=org_a.identity_id)
    record_id = receipt.record_id
    assert receipt.basis == records_pb2.WRITE_BASIS_REGISTERING_ORGANIZATION

    # -- B's practitioner is denied and learns nothing: the same answer as for
    # a record that does not exist, an empty list, nothing to export, no write
    b_reads = dict(purpose=Purpose.TREATMENT, organization_id=org_b.identity_id)
    refused = denial(lambda: dr_b.records.get(record_id, **b_reads))  # type: ignore[arg-type]
    unknown_id = str(uuid.uuid4())
    absent = denial(lambda: dr_b.records.get(unknown_id, **b_reads))  # type: ignore[arg-type]
    assert refused.replace(record_id, "<id>") == absent.replace(unknown_id, "<id>")
    reveals_nothing(refused)
    assert list(dr_b.records.list(patient_id, **b_reads)) == []  # type: ignore[arg-type]
    assert nothing_exported(dr_b, patient_id, **b_reads)
    reveals_nothing(denial(lambda: dr_b.records.create(patient_id, observation(patient_id, MARKER), organization_id=org_b.identity_id)))

    # -- the patient grants TREATMENT to hospital B; B's practitioner reads and
    # verifies offline that exactly this content was sequenced
    consent = patient.consent.grant(patient.consent.terms(org_b.identity_id, [Purpose.TREATMENT]))
    assert consent.status == consent_pb2.CONSENT_STATUS_ACTIVE
    read = proved_read(dr_b, record_id, **b_reads)
    proved = dr_b.records.verified(read, stack.anchors)
    assert proved.content_checked and proved.author_checked
    assert json.loads(proved.record.resource_json)["note"][0]["text"] == MARKER
    assert proved.record.author_id == dr_a.identity_id and proved.record.custodian_organization_id == org_a.identity_id
    trusted_checkpoint = proved.proven.checkpoint
    disclosed_to_b = list(read.disclosure_event_ids)
    assert disclosed_to_b

    # -- the patient revokes; B is denied again
    revoked = patient.consent.revoke(consent.terms.consent_id)
    assert revoked.status == consent_pb2.CONSENT_STATUS_REVOKED
    reveals_nothing(denial(lambda: dr_b.records.get(record_id, **b_reads)))  # type: ignore[arg-type]
    assert list(dr_b.records.list(patient_id, **b_reads)) == []  # type: ignore[arg-type]

    # -- the patient exports everything: a FHIR Bundle (collection) holding the record
    export = patient.records.export()
    bundle = Bundle.model_validate(export.bundle)
    assert bundle.type == "collection" and export.record_count == 1
    exported = []
    for entry in bundle.entry or []:
        assert entry.resource is not None
        exported.append(entry.resource)
    assert [r.get_resource_type() for r in exported] == ["Observation"]
    exported_observation = exported[0]
    assert isinstance(exported_observation, Observation) and exported_observation.note is not None
    assert exported_observation.note[0].text == MARKER

    # -- the patient's accounting of disclosures (ListDisclosures through the
    # client) lists B's read and B's refusals; B may not see it
    def accounted() -> bool:
        lines = list(patient.records.disclosures(page_size=2))
        denials = [e for e in lines if e.access_decision.decision == consent_pb2.DECISION_DENY]
        return set(disclosed_to_b) <= {e.event_id for e in lines} and any(
            e.access_decision.requester_id == dr_b.identity_id for e in denials)

    wait_until(accounted, 30, 0.3, "the patient's disclosures indexed by the records service")
    reveals_nothing(denial(lambda: list(dr_b.records.disclosures(patient_id))))

    # -- the patient erases their data: content gone, proof still good
    assert hospital_a.identity.get(patient_id).demographics.family_name == FAMILY
    erased = patient.records.erase()
    assert erased.patient_id == patient_id and erased.versions_erased == 1
    after = patient.records.get(record_id)
    assert after.record.HasField("erased_at") and after.record.resource_json == "" and after.record.salt == b""
    still = verify_record(after, stack.anchors)
    assert not still.content_checked and still.proven.index == proved.proven.index
    with pytest.raises(errors.FailedPrecondition):
        dr_a.records.create(patient_id, observation(patient_id, MARKER), organization_id=org_a.identity_id)
    wait_until(lambda: not hospital_a.identity.get(patient_id).HasField("demographics"), 20, 0.2,
               "the identity service to shred the patient's demographics")

    # -- the ledger verifies end to end, consistent with what B trusted ...
    expected = {
        "IdentityRegistered": set(registered.event_ids),
        "RecordCreated": {receipt.event_id},
        "ConsentGranted": {consent.granted_event_id},
        "RecordsDisclosed": set(disclosed_to_b) | set(export.disclosure_event_ids),
        "PatientDataErased": {erased.event_id},
    }
    entries = await sequenced_entries(stack, wanted=set().union(*expected.values()))
    ledger = stack.connection.ledger
    assert ledger.served_verifier_key().verifier_key == stack.anchors.ledger.verifier_key  # what was pinned
    newest = open_checkpoint(entries.checkpoint, stack.anchors.ledger, origin=stack.anchors.origin)
    assert ledger.advance(trusted_checkpoint, newest) == newest
    assert ledger.advance(newest, ledger.checkpoint(stack.anchors)).size >= newest.size

    # ... holds every one of those events: registration, record, both
    # denials, grant, the allowed read and its disclosure, revocation, export,
    # erasure ...
    by_id = {e.event_id: e for e in entries.envelopes}
    for kind, ids in expected.items():
        for event_id in ids:
            assert by_id[event_id].event_type == f"medledger.v1.{kind}", (kind, event_id)
    about_patient = [e for e in entries.envelopes if e.aggregate_id == patient_id]
    assert [r.consent_id for r in payloads(about_patient, consent_pb2.ConsentRevoked)] == [consent.terms.consent_id]
    decisions = {e.event_id: consent_pb2.AccessDecided.FromString(e.payload.value)
                 for e in about_patient if e.event_type == "medledger.v1.AccessDecided"}
    b_denials = {d.reason for d in decisions.values()
                 if d.requester_id == dr_b.identity_id and d.decision == consent_pb2.DECISION_DENY}
    # B's refused reads before the grant and after the revocation, each decided on the ledger
    assert {consent_pb2.REASON_NO_CONSENT, consent_pb2.REASON_CONSENT_REVOKED} <= b_denials, b_denials
    for event_id in disclosed_to_b:
        disclosure = records_pb2.RecordsDisclosed.FromString(by_id[event_id].payload.value)
        assert (disclosure.requester_id, disclosure.consent_id) == (dr_b.identity_id, consent.terms.consent_id)
        assert decisions[disclosure.access_decided_event_id].decision == consent_pb2.DECISION_ALLOW
        assert [(r.record_id, r.commitment) for r in disclosure.records] == [(record_id, receipt.commitment)]
    for event_id in export.disclosure_event_ids:
        disclosure = records_pb2.RecordsDisclosed.FromString(by_id[event_id].payload.value)
        assert disclosure.requester_id == patient_id and disclosure.basis == records_pb2.DISCLOSURE_BASIS_PATIENT

    # ... and no PHI: not on any topic, not in the ledger, not in any log line
    await assert_no_phi(stack, entries.leaves)


def nothing_exported(reader: Client, patient_id: str, **how: object) -> bool:
    """An export that reveals nothing: refused, or a Bundle with no entry."""
    try:
        export = reader.records.export(patient_id, **how)  # type: ignore[arg-type]
    except errors.PermissionDenied as exc:
        reveals_nothing(str(exc))
        return True
    return not export.bundle.get("entry") and export.record_count == 0


@dataclass
class Entries:
    checkpoint: bytes
    leaves: list[bytes]
    envelopes: list[events_pb2.EventEnvelope]


async def sequenced_entries(stack: Stack, wanted: set[str]) -> Entries:
    """Every ledger entry up to a signed checkpoint that covers the wanted
    events, replayed and verified as an auditor does (leaf hashes, chain,
    root, checkpoint signature), read with an AUDITOR token."""
    auditor = stack.identity.auditor()
    channel, ledger = ledger_stub(stack.ledger_address)
    try:
        deadline = time.monotonic() + 60
        while True:
            checkpoint = wait_for_checkpoint(ledger, 1)
            entries = audit(ledger, checkpoint, auditor.metadata)
            envelopes = [events_pb2.EventEnvelope.FromString(e.event) for e in entries]
            if wanted <= {e.event_id for e in envelopes}:
                return Entries(checkpoint.checkpoint, [e.event for e in entries], envelopes)
            assert time.monotonic() < deadline, f"never sequenced: {wanted - {e.event_id for e in envelopes}}"
            time.sleep(0.3)
    finally:
        channel.close()


M = TypeVar("M", bound=Message)


def payloads(envelopes: list[events_pb2.EventEnvelope], cls: type[M]) -> list[M]:
    return [cls.FromString(e.payload.value) for e in envelopes if e.event_type == cls.DESCRIPTOR.full_name]


async def assert_no_phi(stack: Stack, leaves: list[bytes]) -> None:
    found: list[str] = []
    scanned: dict[str, int] = {}
    for topic in stack.topics.all:
        records = await consume_all(topic, 0, timeout=5)
        scanned[topic] = len(records)
        for record in records:
            for what, value in PHI.items():
                if value.encode() in (record.value or b"") or value.encode() in (record.key or b""):
                    found.append(f"{what} on {topic}")
    for index, leaf in enumerate(leaves):
        for what, value in PHI.items():
            if value.encode() in leaf:
                found.append(f"{what} in ledger entry {index}")
    logs = sorted(stack.logs.glob("*.log"))
    assert {log.name.split("-")[0] for log in logs} >= {"identity", "consent", "ledger", "records"}
    t = stack.topics
    written = (t.identity_events, t.consent_events, t.records_events, t.access_events, t.ledger_entries)
    assert all(scanned[topic] for topic in written), f"a topic the story writes to was empty: {scanned}"
    for log in logs:
        text = log.read_text(errors="replace")
        for what, value in PHI.items():
            if value in text:
                found.append(f"{what} in {log.name}")
    assert not found, found


async def test_amendments_history_and_research_registrations_through_the_client(stack: Stack) -> None:
    """The rest of what an integrator does with the library, on the same
    real stack: amend a record (a new signed version linked to the last),
    read its history and prove every version; register a trial's documents
    by hash and prove them; a stale amendment is refused."""
    org = stack.identity.organization()
    hospital = stack.login(org)
    doctor = practitioner_of(stack, hospital)
    patient_id = hospital.identity.register_patient(raw_public_key(Ed25519PrivateKey.generate())).identity_id

    first = doctor.records.create(patient_id, observation(patient_id, "first reading"), organization_id=org.identity_id)
    latest = proved_read(doctor, first.record_id, purpose=Purpose.TREATMENT).record
    second = doctor.records.amend(latest, observation(patient_id, "corrected reading"))
    assert (second.record_id, second.version) == (first.record_id, 2)
    with pytest.raises(errors.FailedPrecondition):
        doctor.records.amend(latest, observation(patient_id, "a stale correction"))  # version 1 is no longer the latest

    history = list(doctor.records.history(first.record_id, purpose=Purpose.TREATMENT))
    assert [(v.version, json.loads(v.resource_json)["note"][0]["text"]) for v in history] == [
        (1, "first reading"), (2, "corrected reading")]
    assert history[1].attestation.previous_commitment == history[0].commitment
    for version in (1, 2):
        reply = proved_read(doctor, first.record_id, purpose=Purpose.TREATMENT, version=version)
        proved = doctor.records.verified(reply, stack.anchors)
        assert proved.content_checked and proved.author_checked and proved.record.version == version
        kind = "RecordCreated" if version == 1 else "RecordAmended"
        assert proved.proven.envelope.event_type == f"medledger.v1.{kind}"

    research = stack.login(stack.identity.organization("RESEARCH"))
    trial = f"NCT{uuid.uuid4().int % 10**8:08d}"
    results, protocol = b"%PDF results of the trial", b"%PDF the trial's protocol"
    research.records.register_research_artifact(trial, ArtifactKind.RESULTS, results)
    research.records.register_research_artifact(trial, ArtifactKind.PROTOCOL, protocol)
    timeline = research.records.trial_artifacts(trial)
    assert [a.kind for a in timeline.artifacts] == [records_pb2.ARTIFACT_RESULTS, records_pb2.ARTIFACT_PROTOCOL]
    assert timeline.registered_out_of_order and timeline.artifacts[0].before_protocol
    deadline = time.monotonic() + 30
    while (found := doctor.records.verify_research_artifact(results)).registrations[0].proof_status != records_pb2.PROOF_INCLUDED:
        assert time.monotonic() < deadline, "the registration never reached the ledger"
        time.sleep(0.2)
    proven = verify_proof(found.registrations[0].proof, stack.anchors)
    assert proven.envelope.event_type == "medledger.v1.ResearchArtifactRegistered"
    assert proven.envelope.event_id == found.registrations[0].artifact.event_id
    assert doctor.records.verify_research_artifact(b"a document nobody registered").registrations == []
