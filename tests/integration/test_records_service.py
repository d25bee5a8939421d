"""The records service as operators run it — a real process with its own
database — beside real identity, consent and ledger processes, on the real
Kafka and PostgreSQL: writes under the write rules, reads under consent with
every disclosure on access.events and a proof that verifies offline, bad
input, forged signatures and forged events, amendments, export, erasure, and
research artifacts. No PHI reaches any topic."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import pytest
from fhir.resources.R4B.bundle import Bundle

from medledger.audit.prove import verify_bundle
from medledger.ledger.note import NoteSigner, NoteVerifier
from medledger.records.domain import ATTESTATION_PREFIX
from medledger.runtime.envelope import envelope
from medledger.runtime.settings import Topics
from medledger.runtime.signed import signature_valid
from medledger.testing.consent import consent_env, grant_request, payloads, read_topic, terms
from medledger.testing.identity import IdentityHarness, Party, generate_key, raw_public
from medledger.testing.ledger import consume_all, produce_raw
from medledger.testing.records import amend_request, create_request, erasure_request, observation, records_env
from medledger.testing.stack import PRODUCERS, ServiceProcess, all_serving, wait_until
from medledger.testing.rpc import code_of
from medledger.v1 import consent_pb2 as cpb
from medledger.v1 import consent_pb2_grpc, events_pb2, identity_pb2, ledger_pb2, ledger_pb2_grpc
from medledger.v1 import records_pb2 as pb
from medledger.v1 import records_pb2_grpc

TREAT, RESEARCH = cpb.PURPOSE_TREATMENT, cpb.PURPOSE_RESEARCH
GIVEN, FAMILY, BIRTH_DATE = "Ottoline", "Vasquez-Brannigan", "1961-09-23"
MRN = f"MRN-{uuid.uuid4().hex[:10]}"


@dataclass
class World:
    identity: IdentityHarness
    records: records_pb2_grpc.RecordsServiceStub
    consent: consent_pb2_grpc.ConsentServiceStub
    ledger: ledger_pb2_grpc.LedgerServiceStub
    ledger_key: NoteVerifier
    topics: Topics
    records_process: ServiceProcess
    org_a: Party
    org_b: Party
    patient: Party
    doc_a: Party
    doc_b: Party

    def write(self, doc: Party, org: Party, resource: dict[str, Any] | str, record_id: str = "", **kw: Any) -> tuple[pb.CreateRecordRequest, pb.RecordReceipt]:
        request = self.create_request(doc, org, resource, record_id, **kw)
        return request, self.records.CreateRecord(request, metadata=doc.metadata, timeout=20)

    def create_request(self, doc: Party, org: Party, resource: dict[str, Any] | str, record_id: str = "", **kw: Any) -> pb.CreateRecordRequest:
        fields = dict(record_id=record_id or str(uuid.uuid4()), patient_id=self.patient.identity_id,
                      organization_id=org.identity_id, author_id=doc.identity_id, author_key_id=doc.key_id,
                      resource=resource)
        fields.update(kw)
        return create_request(kw.pop("key", doc.private_key), **{k: v for k, v in fields.items() if k != "key"})

    def read(self, who: Party, record_id: str, purpose: cpb.Purpose.ValueType = TREAT, version: int = 0) -> pb.GetRecordResponse:
        request = pb.GetRecordRequest(record_id=record_id, purpose=purpose, version=version)
        return self.records.GetRecord(request, metadata=who.metadata, timeout=20)

    def listing(self, who: Party, purpose: cpb.Purpose.ValueType = TREAT, **kw: Any) -> pb.ListPatientRecordsResponse:
        request = pb.ListPatientRecordsRequest(patient_id=self.patient.identity_id, purpose=purpose, **kw)
        return self.records.ListPatientRecords(request, metadata=who.metadata, timeout=20)

    def grant(self, grantee: Party, **kw: Any) -> cpb.Consent:
        t = terms(self.patient.identity_id, grantee.identity_id, signer_key_id=self.patient.key_id, **kw)
        return self.consent.GrantConsent(grant_request(self.patient.private_key, t), metadata=self.patient.metadata, timeout=20)

    def proof_when_included(self, who: Party, record_id: str, version: int = 0) -> pb.GetRecordResponse:
        found: list[pb.GetRecordResponse] = []

        def included() -> bool:
            found[:] = [self.read(who, record_id, version=version)]
            return found[0].proof_status == pb.PROOF_INCLUDED

        wait_until(included, 60, 0.3, "the record's event sequenced under a checkpoint")
        return found[0]


def status_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as failure:
        call()
    return failure.value.code(), failure.value.details()


@pytest.fixture
def world(
    identity_service: IdentityHarness, spawn: Callable[..., ServiceProcess], service_env: dict[str, str],
    topics: Topics, tmp_path: Path,
) -> Iterator[World]:
    consent = spawn("consent", **consent_env(identity_service, tmp_path))
    ledger = spawn("ledger")
    records = spawn("records", **records_env(identity_service, tmp_path, service_env))
    all_serving(consent, ledger, records)
    ledger_key = NoteSigner.from_signer_key(Path(service_env["MEDLEDGER_LEDGER_SIGNING_KEY_FILE"]).read_text())
    org_a, org_b = identity_service.organization(), identity_service.organization()
    demographics = identity_pb2.Demographics(given_name=GIVEN, family_name=FAMILY, birth_date=BIRTH_DATE)
    patient = identity_service.patient(org_a, demographics, medical_record_number=MRN)
    channels = [grpc.insecure_channel(p.address, options=[("grpc.max_send_message_length", 16 << 20)])
                for p in (records, consent, ledger)]
    yield World(
        identity_service, records_pb2_grpc.RecordsServiceStub(channels[0]),
        consent_pb2_grpc.ConsentServiceStub(channels[1]), ledger_pb2_grpc.LedgerServiceStub(channels[2]),
        NoteVerifier.from_verifier_key(ledger_key.verifier_key), topics, records,
        org_a, org_b, patient, identity_service.practitioner(org_a), identity_service.practitioner(org_b),
    )
    for channel in channels:
        channel.close()


def demographics(w: World, patient: Party) -> identity_pb2.Demographics | None:
    """As the registering organization sees them; None once shredded."""
    found = w.identity.stub.GetIdentity(identity_pb2.GetIdentityRequest(identity_id=patient.identity_id),
                                        metadata=w.org_a.metadata, timeout=10)
    return found.demographics if found.HasField("demographics") else None


def verify_offline(world: World, reply: pb.GetRecordResponse, author: Party) -> events_pb2.EventEnvelope:
    """What a client does with nothing but pinned keys: the bundle proves the
    event, the event is the records service's, and it commits to exactly the
    content served, signed by the author."""
    result = verify_bundle(reply.proof, world.ledger_key, PRODUCERS.verifier())
    assert result.valid, result.findings
    env = events_pb2.EventEnvelope.FromString(reply.proof.entry.event)
    created = pb.RecordCreated() if env.event_type.endswith("RecordCreated") else pb.RecordAmended()
    env.payload.Unpack(created)
    record = reply.record
    assert created.attestation.commitment == hashlib.sha256(record.salt + record.resource_json.encode()).digest()
    assert created.attestation.record_id == record.record_id and created.attestation.version == record.version
    signed = ATTESTATION_PREFIX + created.attestation.SerializeToString(deterministic=True)
    assert signature_valid(author.public_key, signed, created.author_signature)
    return env


async def disclosures(topics: Topics, wanted: set[str]) -> list[pb.RecordsDisclosed]:
    found: list[events_pb2.EventEnvelope] = []
    for _ in range(100):
        found = await read_topic(topics.access_events)
        if wanted <= {e.event_id for e in found}:
            break
        await asyncio.sleep(0.2)
    return [d for e in found if e.event_id in wanted for d in payloads([e], pb.RecordsDisclosed)]


async def test_custodian_writes_other_hospital_needs_consent_and_every_read_is_disclosed_and_provable(world: World) -> None:
    w = world
    marker = f"marker-{uuid.uuid4().hex}"
    _, receipt = w.write(w.doc_a, w.org_a, observation(w.patient.identity_id, marker))
    assert receipt.basis == pb.WRITE_BASIS_REGISTERING_ORGANIZATION and receipt.version == 1
    record_id = receipt.record_id

    # The patient and the custodian read; the proof verifies offline.
    own = w.proof_when_included(w.patient, record_id)
    assert json.loads(own.record.resource_json)["note"][0]["text"] == marker
    assert own.record.ledger_index == own.proof.entry.index
    verify_offline(w, own, w.doc_a)
    assert w.read(w.doc_a, record_id).record.commitment == receipt.commitment

    # Hospital B is denied, exactly as for a record that does not exist, and its list is empty.
    denied = status_of(lambda: w.read(w.doc_b, record_id))
    unknown = status_of(lambda: w.read(w.doc_b, "no-such-record"))
    assert denied[0] == unknown[0] == grpc.StatusCode.PERMISSION_DENIED
    assert denied[1].replace(record_id, "X") == unknown[1].replace("no-such-record", "X")
    assert not w.listing(w.doc_b).records and not w.listing(w.doc_b).next_page_token
    code, _ = status_of(lambda: w.write(w.doc_b, w.org_b, observation(w.patient.identity_id)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # Nor may B write for hospital A, of which it is no member.
    assert status_of(lambda: w.write(w.doc_b, w.org_a, observation(w.patient.identity_id)))[0] == grpc.StatusCode.PERMISSION_DENIED

    # TREATMENT consent to hospital B: B reads (consent's ALLOW, asked with B's own token) and writes.
    consent = w.grant(w.org_b)
    by_b = w.read(w.doc_b, record_id)
    assert json.loads(by_b.record.resource_json)["note"][0]["text"] == marker
    _, b_receipt = w.write(w.doc_b, w.org_b, observation(w.patient.identity_id))
    assert (b_receipt.basis, w.listing(w.doc_b).records[0].record_id) == (pb.WRITE_BASIS_CONSENT, b_receipt.record_id)

    # Revoked: denied again.
    w.consent.RevokeConsent(cpb.RevokeConsentRequest(consent_id=consent.terms.consent_id), metadata=w.patient.metadata, timeout=20)
    assert status_of(lambda: w.read(w.doc_b, record_id))[0] == grpc.StatusCode.PERMISSION_DENIED
    assert [r.record_id for r in w.listing(w.doc_b).records] == [b_receipt.record_id]  # its own organization's record only

    # Every served read is a RecordsDisclosed: who, why, which version and commitment; never content.
    wanted = {*own.disclosure_event_ids, *by_b.disclosure_event_ids}
    found = {d.requester_id: d for d in await disclosures(w.topics, wanted)}
    assert found[w.patient.identity_id].basis == pb.DISCLOSURE_BASIS_PATIENT
    b_read = found[w.doc_b.identity_id]
    assert (b_read.basis, b_read.consent_id, b_read.organization_id) == (pb.DISCLOSURE_BASIS_CONSENT, consent.terms.consent_id, w.org_b.identity_id)
    decisions = {e.event_id: d for e in await read_topic(w.topics.access_events) for d in payloads([e], cpb.AccessDecided)}
    assert decisions[b_read.access_decided_event_id].requester_id == w.doc_b.identity_id  # asked as B, not as records
    assert [(r.record_id, r.version, r.commitment) for r in b_read.records] == [(record_id, 1, receipt.commitment)]
    assert marker.encode() not in b"".join(e.SerializeToString() for e in await read_topic(w.topics.access_events))


async def test_lists_learn_each_versions_ledger_index_from_the_ledger_without_any_read(world: World) -> None:
    """records learns where each version sits in the ledger from
    ledger.entries in the background; a list shows it without anyone having
    read the record, and it is the index the record's proof proves."""
    w = world
    _, receipt = w.write(w.doc_a, w.org_a, observation(w.patient.identity_id, "indexed"))
    listed: list[pb.Record] = []

    def indexed() -> bool:
        listed[:] = [r for r in w.listing(w.doc_a).records if r.record_id == receipt.record_id]
        return bool(listed) and listed[0].ledger_index > 0

    wait_until(indexed, 60, 0.3, "the version's ledger index in a list")
    assert listed[0].ledger_index == w.proof_when_included(w.doc_a, receipt.record_id).proof.entry.index


async def test_bad_input_is_refused_and_nothing_is_stored_or_published(world: World) -> None:
    w = world
    pid = w.patient.identity_id
    cases: list[tuple[str, Callable[[], object], grpc.StatusCode, str]] = [
        ("invalid FHIR", lambda: w.write(w.doc_a, w.org_a, {**observation(pid), "effectiveDateTime": "yesterday"}),
         grpc.StatusCode.INVALID_ARGUMENT, "Observation.effectiveDateTime"),
        ("over 4 MiB", lambda: w.write(w.doc_a, w.org_a, observation(pid, "x" * (4 * 1024 * 1024 + 10))),
         grpc.StatusCode.RESOURCE_EXHAUSTED, "4 MiB"),
        ("unknown patient", lambda: w.write(w.doc_a, w.org_a, observation("0190ffff-0000-7000-8000-000000000000"),
                                            patient_id="0190ffff-0000-7000-8000-000000000000"),
         grpc.StatusCode.NOT_FOUND, "not a registered patient"),
        ("subject is someone else", lambda: w.write(w.doc_a, w.org_a, observation(w.doc_b.identity_id)),
         grpc.StatusCode.INVALID_ARGUMENT, "not the attested patient"),
        ("signed with another key", lambda: w.write(w.doc_a, w.org_a, observation(pid), key=w.doc_b.private_key),
         grpc.StatusCode.PERMISSION_DENIED, "does not verify"),
        ("a foreign key", lambda: w.write(w.doc_a, w.org_a, observation(pid), key=w.doc_b.private_key, author_key_id=w.doc_b.key_id),
         grpc.StatusCode.PERMISSION_DENIED, "not a key of author"),
        ("another author's attestation", lambda: w.records.CreateRecord(
            w.create_request(w.doc_b, w.org_a, observation(pid)), metadata=w.doc_a.metadata, timeout=20),
         grpc.StatusCode.PERMISSION_DENIED, "author must be the caller"),
    ]
    for name, call, expected, detail in cases:
        code, message = status_of(call)
        assert (code, detail in message) == (expected, True), f"{name}: {code} {message}"
        assert "Ottoline" not in message
    # Nothing was stored (the patient sees no record) and nothing published.
    assert not w.listing(w.patient, purpose=cpb.PURPOSE_UNSPECIFIED).records
    assert not [e for e in await read_topic(w.topics.records_events)]


async def test_a_rotated_out_or_revoked_author_key_signs_nothing_from_the_moment_identity_answers(world: World) -> None:
    """Authors' keys come from records' projection of identity.events, which
    every write syncs to the log end first: once RotateKey or RevokeKey has
    answered, the very next write is judged by the new keys (no window)."""
    w = world
    pid = w.patient.identity_id
    doc = w.identity.practitioner(w.org_a)
    old_key, old_key_id = doc.private_key, doc.key_id
    w.write(doc, w.org_a, observation(pid))
    before_rotation = datetime.now(timezone.utc)
    new_key = generate_key()
    w.identity.stub.RotateKey(identity_pb2.RotateKeyRequest(identity_id=doc.identity_id, public_key=raw_public(new_key)),
                              metadata=w.org_a.metadata, timeout=15)
    doc.private_key = new_key
    w.identity.login(doc)

    def with_old_key(**kw: Any) -> tuple[pb.CreateRecordRequest, pb.RecordReceipt]:
        return w.write(doc, w.org_a, observation(pid), key=old_key, author_key_id=old_key_id, **kw)

    code, message = status_of(with_old_key)
    assert (code, "not in effect at signed_at" in message) == (grpc.StatusCode.PERMISSION_DENIED, True), message
    w.write(doc, w.org_a, observation(pid))  # the new key signs at once
    # What the old key signed while it was in effect still counts...
    with_old_key(signed_at=before_rotation)
    # ...until it is revoked: refused by the very next write, backdated or not.
    w.identity.stub.RevokeKey(identity_pb2.RevokeKeyRequest(identity_id=doc.identity_id, key_id=old_key_id),
                              metadata=w.org_a.metadata, timeout=15)
    code, message = status_of(lambda: with_old_key(signed_at=before_rotation))
    assert (code, "has been revoked" in message) == (grpc.StatusCode.PERMISSION_DENIED, True), message
    assert len(w.listing(w.patient, purpose=cpb.PURPOSE_UNSPECIFIED).records) == 3


async def test_amendments_history_and_a_scoped_consent_export(world: World) -> None:
    w = world
    pid = w.patient.identity_id
    request, first = w.write(w.doc_a, w.org_a, observation(pid, "first reading"))
    condition = {"resourceType": "Condition", "subject": {"reference": f"Patient/{pid}"}, "code": {"text": "asthma"}}
    _, other = w.write(w.doc_a, w.org_a, condition)
    amended = w.records.AmendRecord(amend_request(
        w.doc_a.private_key, record_id=first.record_id, version=2, patient_id=pid, organization_id=w.org_a.identity_id,
        author_id=w.doc_a.identity_id, author_key_id=w.doc_a.key_id, resource=observation(pid, "corrected"),
        previous_commitment=first.commitment,
    ), metadata=w.doc_a.metadata, timeout=20)
    assert (amended.version, amended.record_id) == (2, first.record_id)
    stale = amend_request(w.doc_a.private_key, record_id=first.record_id, version=2, patient_id=pid,
                          organization_id=w.org_a.identity_id, author_id=w.doc_a.identity_id,
                          author_key_id=w.doc_a.key_id, resource=observation(pid), previous_commitment=first.commitment)
    assert status_of(lambda: w.records.AmendRecord(stale, metadata=w.doc_a.metadata, timeout=20))[0] == grpc.StatusCode.FAILED_PRECONDITION

    history = w.records.GetRecordHistory(pb.GetRecordHistoryRequest(record_id=first.record_id, purpose=TREAT),
                                         metadata=w.doc_a.metadata, timeout=20)
    assert [json.loads(v.resource_json)["note"][0]["text"] for v in history.versions] == ["first reading", "corrected"]
    assert w.read(w.patient, first.record_id, version=1).record.commitment == first.commitment
    # Each version's proof proves exactly the version served, the latest and an older one.
    for number in (0, 1):
        reply = w.proof_when_included(w.patient, first.record_id, version=number)
        env = verify_offline(w, reply, w.doc_a)
        assert (reply.record.version, env.event_type.endswith("RecordAmended")) == ((2, True) if number == 0 else (1, False))
    assert status_of(lambda: w.read(w.patient, first.record_id, version=3))[0] == grpc.StatusCode.OUT_OF_RANGE

    # A consent for Conditions only: B sees the Condition and nothing about the Observation.
    w.grant(w.org_b, categories=["Condition"])
    assert [r.record_id for r in w.listing(w.doc_b).records] == [other.record_id]
    exported = w.records.ExportPatientRecords(pb.ExportPatientRecordsRequest(patient_id=pid, purpose=TREAT),
                                              metadata=w.doc_b.metadata, timeout=20)
    assert exported.record_count == 1 and first.record_id not in exported.bundle_json
    # RESEARCH needs its own consent, even for the custodian.
    assert not w.listing(w.doc_a, purpose=RESEARCH).records

    # The patient exports everything, as a valid FHIR Bundle (collection), latest versions.
    everything = w.records.ExportPatientRecords(pb.ExportPatientRecordsRequest(patient_id=pid), metadata=w.patient.metadata, timeout=20)
    bundle = Bundle.model_validate_json(everything.bundle_json)
    assert bundle.type == "collection" and everything.record_count == 2
    assert {e.fullUrl for e in bundle.entry or []} == {f"urn:medledger:record:{first.record_id}:2", f"urn:medledger:record:{other.record_id}:1"}

    # Paging: one record per page, each token revealing only readable positions.
    page = w.listing(w.patient, purpose=cpb.PURPOSE_UNSPECIFIED, page_size=1)
    rest = w.listing(w.patient, purpose=cpb.PURPOSE_UNSPECIFIED, page_size=1, page_token=page.next_page_token)
    assert [page.records[0].record_id, rest.records[0].record_id] == [other.record_id, first.record_id]
    assert not rest.next_page_token
    assert status_of(lambda: w.listing(w.patient, purpose=cpb.PURPOSE_UNSPECIFIED, page_token="garbage!"))[0] == grpc.StatusCode.INVALID_ARGUMENT


async def test_erasure_shreds_content_and_demographics_and_the_ledger_still_proves(world: World) -> None:
    w = world
    pid = w.patient.identity_id
    marker = f"marker-{uuid.uuid4().hex}"
    _, receipt = w.write(w.doc_a, w.org_a, observation(pid, marker))
    before = w.proof_when_included(w.patient, receipt.record_id)

    stranger = erasure_request(w.doc_b.private_key, pid, w.doc_b.identity_id, w.doc_b.key_id)
    assert status_of(lambda: w.records.ErasePatientData(stranger, metadata=w.doc_b.metadata, timeout=20))[0] == grpc.StatusCode.PERMISSION_DENIED
    forged = erasure_request(w.doc_b.private_key, pid, pid, w.patient.key_id)
    assert status_of(lambda: w.records.ErasePatientData(forged, metadata=w.patient.metadata, timeout=20))[0] == grpc.StatusCode.PERMISSION_DENIED
    # A forged PatientDataErased naming the patient, then a genuine erasure of
    # another patient in the same partition: once identity applied the
    # genuine one it has read past the forgery, and ignored it.
    other = w.identity.patient(w.org_a, identity_pb2.Demographics(given_name="Someone"))
    fake = envelope(pb.PatientDataErased(request=pb.ErasureRequest(patient_id=pid)), aggregate_id=pid, producer="records")
    await produce_raw(w.topics.records_events, [PRODUCERS.signers["consent"].seal(fake)], key=other.identity_id)
    w.records.ErasePatientData(erasure_request(other.private_key, other.identity_id, other.identity_id, other.key_id),
                               metadata=other.metadata, timeout=20)
    wait_until(lambda: not demographics(w, other), 30, 0.2, "the other patient's demographics shredded")
    assert (demographics(w, w.patient) or identity_pb2.Demographics()).given_name == GIVEN

    erased = w.records.ErasePatientData(erasure_request(w.patient.private_key, pid, pid, w.patient.key_id),
                                        metadata=w.patient.metadata, timeout=20)
    assert erased.versions_erased == 1
    again = w.records.ErasePatientData(erasure_request(w.patient.private_key, pid, pid, w.patient.key_id),
                                       metadata=w.patient.metadata, timeout=20)
    assert (again.erasure_id, again.event_id) == (erased.erasure_id, erased.event_id)

    after = w.read(w.patient, receipt.record_id)
    assert after.record.HasField("erased_at") and not after.record.resource_json and not after.record.salt
    assert not after.disclosure_event_ids
    assert after.proof_status == pb.PROOF_INCLUDED  # the commitment is still proved, linked to nothing
    assert verify_bundle(after.proof, w.ledger_key, PRODUCERS.verifier()).valid
    assert after.record.commitment == before.record.commitment
    code, message = status_of(lambda: w.write(w.doc_a, w.org_a, observation(pid)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "erased" in message

    # The identity service shreds the demographics on the same event.
    wait_until(lambda: not demographics(w, w.patient), 30, 0.2, "demographics shredded")
    lookup = identity_pb2.FindPatientByMrnRequest(medical_record_number=MRN)
    assert status_of(lambda: w.identity.stub.FindPatientByMrn(lookup, metadata=w.org_a.metadata))[0] == grpc.StatusCode.NOT_FOUND

    # No PHI on any topic (the ledger's included); the content marker nowhere in the service log either.
    for topic in w.topics.all:
        raw = b"".join(r.value or b"" for r in await consume_all(topic, 0, timeout=1))
        for secret in (GIVEN, FAMILY, BIRTH_DATE, MRN, marker):
            assert secret.encode() not in raw, f"{secret} on {topic}"
    log = w.records_process.log_path.read_text(errors="replace")
    assert marker not in log and GIVEN not in log


async def test_racing_writes_land_once_and_none_lands_after_the_erasure(world: World) -> None:
    """A write is one statement guarded by the patient's data key and, for an
    amendment, by the version it follows: of six racing amendments of version
    2 exactly one lands; of creates racing the patient's erasure, each either
    landed before it (and was shredded with the rest, counted in the erasure)
    or was refused; each write that landed has exactly one event, the refused
    none."""
    w = world
    pid = w.patient.identity_id
    _, first = w.write(w.doc_a, w.org_a, observation(pid, "before the race"))
    amendments = [amend_request(
        w.doc_a.private_key, record_id=first.record_id, version=2, patient_id=pid, organization_id=w.org_a.identity_id,
        author_id=w.doc_a.identity_id, author_key_id=w.doc_a.key_id, resource=observation(pid, f"amendment {i}"),
        previous_commitment=first.commitment,
    ) for i in range(6)]
    with ThreadPoolExecutor(len(amendments)) as pool:
        codes = list(pool.map(lambda r: code_of(lambda: w.records.AmendRecord(r, metadata=w.doc_a.metadata, timeout=20)),
                              amendments))
    assert sorted(codes, key=str) == sorted([grpc.StatusCode.OK] + [grpc.StatusCode.FAILED_PRECONDITION] * 5, key=str)
    winner = amendments[codes.index(grpc.StatusCode.OK)]
    history = w.records.GetRecordHistory(pb.GetRecordHistoryRequest(record_id=first.record_id, purpose=TREAT),
                                         metadata=w.doc_a.metadata, timeout=20)
    assert [v.commitment for v in history.versions] == [first.commitment,
                                                        pb.RecordAttestation.FromString(winner.attestation).commitment]

    creates = [w.create_request(w.doc_a, w.org_a, observation(pid, f"racing {i}")) for i in range(12)]
    erasure = erasure_request(w.patient.private_key, pid, pid, w.patient.key_id)
    calls: list[Callable[[], object]] = [
        functools.partial(w.records.CreateRecord, r, metadata=w.doc_a.metadata, timeout=20) for r in creates]
    calls.insert(len(calls) // 2, lambda: w.records.ErasePatientData(erasure, metadata=w.patient.metadata, timeout=20))
    with ThreadPoolExecutor(len(calls)) as pool:
        results = list(pool.map(code_of, calls))
    assert results.pop(len(calls) // 2) == grpc.StatusCode.OK
    assert set(results) <= {grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION}, results
    landed = {pb.RecordAttestation.FromString(r.attestation).record_id for r, code in zip(creates, results)
              if code == grpc.StatusCode.OK}
    refused = {pb.RecordAttestation.FromString(r.attestation).record_id for r in creates} - landed

    again = w.records.ErasePatientData(erasure, metadata=w.patient.metadata, timeout=20)
    assert again.versions_erased == 2 + len(landed)  # no version landed after the erasure
    for record_id in landed:
        after = w.read(w.patient, record_id)
        assert after.record.HasField("erased_at") and not after.record.resource_json
    for record_id in refused:  # never stored: answered as any unknown record is, like a denied one
        assert status_of(lambda: w.read(w.patient, record_id))[0] == grpc.StatusCode.PERMISSION_DENIED
    events = await read_topic(w.topics.records_events)
    created = [c.attestation.record_id for c in payloads(events, pb.RecordCreated)]
    assert sorted(r for r in created if r in landed | refused) == sorted(landed)
    assert [a.attestation.commitment for a in payloads(events, pb.RecordAmended)
            if a.attestation.record_id == first.record_id] == [history.versions[1].commitment]


async def test_a_forged_consent_event_grants_no_write(world: World) -> None:
    """Anyone with Kafka access publishes a TREATMENT consent for hospital B;
    records verifies envelopes and ignores it (the write syncs past it first)."""
    w = world
    pid = w.patient.identity_id
    t = terms(pid, w.org_b.identity_id, signer_key_id=w.patient.key_id)
    forged = envelope(cpb.ConsentGranted(terms=t, signature=b"\1" * 64, grantee_kind=cpb.GRANTEE_KIND_ORGANIZATION),
                      aggregate_id=pid, producer="consent")
    await produce_raw(w.topics.consent_events, [PRODUCERS.signers["records"].seal(forged)], key=pid)
    assert status_of(lambda: w.write(w.doc_b, w.org_b, observation(pid)))[0] == grpc.StatusCode.PERMISSION_DENIED


async def test_research_artifacts_timeline_and_proofs(world: World) -> None:
    w = world
    lab = w.identity.organization("RESEARCH")
    researcher = w.identity.practitioner(lab)
    trial = f"NCT{uuid.uuid4().int % 10**8:08d}"
    results = hashlib.sha256(b"results").digest()

    def register(who: Party, kind: pb.ResearchArtifactKind.ValueType, digest: bytes, org: str = "") -> pb.ResearchArtifact:
        request = pb.RegisterResearchArtifactRequest(trial_id=trial, kind=kind, sha256=digest, organization_id=org)
        return w.records.RegisterResearchArtifact(request, metadata=who.metadata, timeout=20)

    early = register(researcher, pb.ARTIFACT_RESULTS, results, lab.identity_id)
    assert early.before_protocol
    register(lab, pb.ARTIFACT_PROTOCOL, hashlib.sha256(b"protocol").digest())
    register(lab, pb.ARTIFACT_ANALYSIS_PLAN, hashlib.sha256(b"plan").digest())
    timeline = w.records.ListTrialArtifacts(pb.ListTrialArtifactsRequest(trial_id=trial), metadata=w.doc_a.metadata, timeout=20)
    assert [a.before_protocol for a in timeline.artifacts] == [True, False, False] and timeline.registered_out_of_order
    assert status_of(lambda: register(w.org_a, pb.ARTIFACT_PROTOCOL, results))[0] == grpc.StatusCode.PERMISSION_DENIED

    def proved() -> bool:
        found = w.records.VerifyResearchArtifact(pb.VerifyResearchArtifactRequest(sha256=results), metadata=w.doc_a.metadata, timeout=20)
        return len(found.registrations) == 1 and found.registrations[0].proof_status == pb.PROOF_INCLUDED

    wait_until(proved, 60, 0.3, "the registration proved")
    found = w.records.VerifyResearchArtifact(pb.VerifyResearchArtifactRequest(sha256=results), metadata=w.doc_a.metadata, timeout=20)
    assert verify_bundle(found.registrations[0].proof, w.ledger_key, PRODUCERS.verifier()).valid
    assert found.registrations[0].artifact.artifact_id == early.artifact_id
    unknown = w.records.VerifyResearchArtifact(pb.VerifyResearchArtifactRequest(sha256=b"\0" * 32), metadata=w.doc_a.metadata)
    assert not unknown.registrations
