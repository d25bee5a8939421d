"""The consent service as operators run it — a real process with its own
database and topics — against the real broker, PostgreSQL and a spawned
identity service: bad input, grant → ALLOW → revoke → DENY, expiry,
organization grants ending with the membership, break-glass (reason codes,
daily limit, reviews, sealed justifications), representatives (signed by the
patient, or appointed by the organization with legal basis and reviewed),
decisions only for the token's subject, consent keys current at submission,
views, FHIR export, access decisions on access.events, and revocation across
replicas."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypedDict, Unpack

import asyncpg
import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fhir.resources.R4B.consent import Consent as FhirConsent

from google.protobuf.message import Message

from medledger.consent.signing import APPOINTMENT_CONTEXT, canonical_terms, sign_appointment
from medledger.runtime.envelope import envelope
from medledger.runtime.secret_files import new_data_key
from medledger.runtime.settings import Topics
from medledger.v1 import consent_pb2 as pb
from medledger.v1 import consent_pb2_grpc, identity_pb2
from medledger.testing.consent import consent_env, events_when, grant_request, payloads, read_topic, terms, ts
from medledger.testing.identity import IdentityHarness, Party, generate_key, raw_public
from medledger.testing.ledger import produce_raw
from medledger.testing.stack import PRODUCERS, ServiceProcess, free_port, wait_until

TREAT, EMERGENCY = pb.PURPOSE_TREATMENT, pb.PURPOSE_EMERGENCY
ALLOW, DENY = pb.DECISION_ALLOW, pb.DECISION_DENY
LIFE_THREATENING = pb.BREAK_GLASS_REASON_LIFE_THREATENING
APPROVED, INAPPROPRIATE, PENDING = pb.REVIEW_STATUS_APPROVED, pb.REVIEW_STATUS_INAPPROPRIATE, pb.REVIEW_STATUS_PENDING
JUSTIFICATION = "unconscious in ER, allergies unknown"


class TermsOptions(TypedDict, total=False):
    """medledger.testing.consent.terms' keywords other than the signer's key."""

    signer_id: str | None
    purposes: Iterable[pb.Purpose.ValueType]
    categories: Iterable[str]
    record_ids: Iterable[str]
    valid_from: datetime | None
    valid_until: datetime | None
    signed_at: datetime | None
    consent_id: str | None


@dataclass
class World:
    identity: IdentityHarness
    consent: ServiceProcess
    stub: consent_pb2_grpc.ConsentServiceStub
    org: Party
    patient: Party
    doc: Party
    service: Party

    def grant(self, t: pb.ConsentTerms, key: Ed25519PrivateKey | None = None, by: Party | None = None) -> pb.Consent:
        request = grant_request(key or self.patient.private_key, t)
        return self.stub.GrantConsent(request, metadata=(by or self.patient).metadata, timeout=15)

    def terms(self, grantee: Party | None = None, **kw: Unpack[TermsOptions]) -> pb.ConsentTerms:
        return terms(self.patient.identity_id, (grantee or self.doc).identity_id, signer_key_id=self.patient.key_id, **kw)

    def check(self, requester: Party | None = None, purpose: pb.Purpose.ValueType = TREAT, category: str = "Observation",
              stub: consent_pb2_grpc.ConsentServiceStub | None = None, patient: Party | None = None) -> pb.AccessDecision:
        """CheckAccess as the records service asks it: forwarding the reader's own token."""
        request = pb.CheckAccessRequest(
            patient_id=(patient or self.patient).identity_id, purpose=purpose, category=category,
        )
        return (stub or self.stub).CheckAccess(request, metadata=(requester or self.doc).metadata, timeout=5)

    def invoke(self, doc: Party | None = None, patient: Party | None = None,
               reason: pb.BreakGlassReason.ValueType = LIFE_THREATENING) -> pb.BreakGlass:
        request = pb.InvokeBreakGlassRequest(
            patient_id=(patient or self.patient).identity_id, justification=JUSTIFICATION, reason=reason,
        )
        return self.stub.InvokeBreakGlass(request, metadata=(doc or self.doc).metadata, timeout=15)

    def listed(self, by: Party | None = None) -> pb.ListConsentsResponse:
        request = pb.ListConsentsRequest(patient_id=self.patient.identity_id)
        return self.stub.ListConsents(request, metadata=(by or self.patient).metadata, timeout=5)

    def pending(self, by: Party, organization: str = "") -> pb.ListPendingReviewsResponse:
        request = pb.ListPendingReviewsRequest(organization_id=organization)
        return self.stub.ListPendingReviews(request, metadata=by.metadata, timeout=5)

    def appoint(self, representative: Party, by: Party | None = None, basis: pb.LegalBasis.ValueType = pb.LEGAL_BASIS_COURT_ORDER,
                evidence: bytes = hashlib.sha256(b"court order 2024/117").digest()) -> pb.Representation:
        request = pb.RegisterRepresentativeRequest(
            patient_id=self.patient.identity_id, representative_id=representative.identity_id,
            legal_basis=basis, evidence_sha256=evidence,
        )
        return self.stub.RegisterRepresentative(request, metadata=(by or self.org).metadata, timeout=15)


def start_consent(spawn: Callable[..., ServiceProcess], env: dict[str, str]) -> tuple[ServiceProcess, consent_pb2_grpc.ConsentServiceStub]:
    process = spawn("consent", MEDLEDGER_CONSENT_PORT=str(free_port()), **env).wait_serving()
    return process, consent_pb2_grpc.ConsentServiceStub(grpc.insecure_channel(process.address))


@pytest.fixture
def world(identity_service: IdentityHarness, spawn: Callable[..., ServiceProcess], tmp_path: Path) -> Iterator[World]:
    env = consent_env(identity_service, tmp_path)
    process, stub = start_consent(spawn, env)
    org = identity_service.organization()
    yield World(
        identity_service, process, stub, org, identity_service.patient(org), identity_service.practitioner(org),
        identity_service.service(),
    )


def status_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


async def test_bad_input_gets_its_status_and_records_nothing(world: World, topics: Topics) -> None:
    w = world
    stranger = w.identity.patient(w.org)
    good = w.terms()
    unsigned = pb.GrantConsentRequest(terms=canonical_terms(good))
    cases: list[tuple[str, Callable[[], object], grpc.StatusCode]] = [
        ("unsigned", lambda: w.stub.GrantConsent(unsigned, metadata=w.patient.metadata, timeout=15),
         grpc.StatusCode.INVALID_ARGUMENT),
        ("wrongly signed", lambda: w.grant(good, key=stranger.private_key), grpc.StatusCode.PERMISSION_DENIED),
        ("signed by someone not the patient",
         lambda: w.grant(terms(w.patient.identity_id, w.doc.identity_id, signer_id=stranger.identity_id,
                               signer_key_id=stranger.key_id), key=stranger.private_key, by=stranger),
         grpc.StatusCode.PERMISSION_DENIED),
        ("unknown grantee", lambda: w.grant(terms(w.patient.identity_id, "no-such-identity", signer_key_id=w.patient.key_id)),
         grpc.StatusCode.NOT_FOUND),
        ("grantee is a patient", lambda: w.grant(w.terms(grantee=stranger)), grpc.StatusCode.INVALID_ARGUMENT),
        ("empty purposes", lambda: w.grant(w.terms(purposes=[])), grpc.StatusCode.INVALID_ARGUMENT),
        ("window ends before it starts",
         lambda: w.grant(w.terms(valid_from=datetime.now(timezone.utc) + timedelta(days=2),
                                 valid_until=datetime.now(timezone.utc) + timedelta(days=1))),
         grpc.StatusCode.INVALID_ARGUMENT),
        ("not canonical", lambda: w.stub.GrantConsent(
            pb.GrantConsentRequest(terms=canonical_terms(good) + b"\xa0\x06\x01", signature=b"s" * 64),
            metadata=w.patient.metadata, timeout=15), grpc.StatusCode.INVALID_ARGUMENT),
        ("no token", lambda: w.stub.GrantConsent(grant_request(w.patient.private_key, good), timeout=15),
         grpc.StatusCode.UNAUTHENTICATED),
    ]
    for name, call, expected in cases:
        assert status_of(call) == expected, name
    consent = w.grant(good)
    assert consent.status == pb.CONSENT_STATUS_ACTIVE and consent.signer_role == pb.SIGNER_ROLE_PATIENT
    assert status_of(lambda: w.grant(good)) == grpc.StatusCode.ALREADY_EXISTS
    revoke = pb.RevokeConsentRequest(consent_id=good.consent_id)
    assert status_of(lambda: w.stub.RevokeConsent(revoke, metadata=stranger.metadata, timeout=15)) == grpc.StatusCode.PERMISSION_DENIED
    assert status_of(lambda: w.stub.RevokeConsent(pb.RevokeConsentRequest(consent_id="nope"), metadata=w.patient.metadata,
                                                  timeout=15)) == grpc.StatusCode.NOT_FOUND
    assert status_of(lambda: w.stub.CheckAccess(pb.CheckAccessRequest(patient_id=w.patient.identity_id, purpose=TREAT,
                                                                      category="Observation"),
                                                metadata=w.patient.metadata, timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
    assert status_of(lambda: w.stub.CheckAccess(pb.CheckAccessRequest(patient_id=w.patient.identity_id, purpose=TREAT),
                                                metadata=w.doc.metadata, timeout=5)) == grpc.StatusCode.INVALID_ARGUMENT
    # Only the one good grant was recorded, by anyone.
    recorded = await read_topic(topics.consent_events)
    assert [g.terms.consent_id for g in payloads(recorded, pb.ConsentGranted)] == [good.consent_id]
    assert payloads(recorded, pb.ConsentRevoked) == []
    listed = w.stub.ListConsents(pb.ListConsentsRequest(patient_id=w.patient.identity_id), metadata=w.patient.metadata, timeout=5)
    assert [c.terms.consent_id for c in listed.consents] == [good.consent_id]


async def test_grant_allow_revoke_deny_and_every_decision_on_access_events(world: World, topics: Topics) -> None:
    w = world
    t = w.terms(categories=["Observation"])
    assert w.check().decision == DENY
    granted = w.grant(t)
    assert granted.terms == t and granted.granted_event_id
    allowed = w.check()
    assert (allowed.decision, allowed.reason, allowed.consent_id) == (ALLOW, pb.REASON_CONSENT, t.consent_id)
    own = w.stub.CheckAccess(pb.CheckAccessRequest(requester_id=w.doc.identity_id, patient_id=w.patient.identity_id,
                                                   purpose=TREAT, category="Observation"), metadata=w.doc.metadata, timeout=5)
    assert own.decision == ALLOW  # naming itself is the same as leaving requester_id empty
    assert w.check(category="Condition").reason == pb.REASON_OUT_OF_SCOPE
    revoked = w.stub.RevokeConsent(pb.RevokeConsentRequest(consent_id=t.consent_id), metadata=w.patient.metadata, timeout=15)
    assert revoked.status == pb.CONSENT_STATUS_REVOKED and revoked.revoked_by == w.patient.identity_id
    denied = w.check()
    assert (denied.decision, denied.reason) == (DENY, pb.REASON_CONSENT_REVOKED)
    asked = {d.decision_event_id for d in (allowed, own, denied)}
    events = await events_when(topics.access_events, lambda found: asked <= {e.event_id for e in found})
    by_id = {e.event_id: e for e in events}
    first = by_id[allowed.decision_event_id]
    assert first.aggregate_id == w.patient.identity_id and first.producer == "consent" and first.actor == w.doc.identity_id
    (decided,) = payloads([first], pb.AccessDecided)
    assert (decided.decision, decided.consent_id, decided.requester_id, decided.asked_by) == (
        ALLOW, t.consent_id, w.doc.identity_id, w.doc.identity_id)
    assert len(payloads(events, pb.AccessDecided)) == 5  # DENY, ALLOW, ALLOW, OUT_OF_SCOPE, DENY


def test_expiry_needs_no_action(world: World) -> None:
    w = world
    now = datetime.now(timezone.utc)
    t = w.terms(valid_from=now - timedelta(minutes=1), valid_until=now + timedelta(seconds=3))
    w.grant(t)
    assert w.check().decision == ALLOW
    wait_until(lambda: w.check().reason == pb.REASON_CONSENT_EXPIRED, 10, 0.2, "expiry")
    got = w.stub.GetConsent(pb.GetConsentRequest(consent_id=t.consent_id), metadata=w.patient.metadata, timeout=5)
    assert got.status == pb.CONSENT_STATUS_EXPIRED


async def test_expiry_is_published_once(world: World, topics: Topics) -> None:
    w = world
    now = datetime.now(timezone.utc)
    t = w.terms(valid_from=now - timedelta(minutes=1), valid_until=now + timedelta(seconds=1))
    w.grant(t)

    await events_when(topics.consent_events, lambda found: bool(payloads(found, pb.ConsentExpired)))
    # A wrong repeat would come from a later expiry pass. A marker consent that
    # ends after the first expiry was seen is expired by such a pass, after the
    # pass has taken in the first expiry; it publishes in the order consents end
    # (same patient, same partition), so a repeat would precede the marker's.
    marker = w.terms(valid_from=now - timedelta(minutes=1), valid_until=datetime.now(timezone.utc) + timedelta(seconds=1))
    w.grant(marker)
    found = await events_when(
        topics.consent_events,
        lambda found: marker.consent_id in {e.consent_id for e in payloads(found, pb.ConsentExpired)},
    )
    expired = payloads(found, pb.ConsentExpired)
    assert [e.consent_id for e in expired] == [t.consent_id, marker.consent_id]


async def test_the_consents_table_follows_the_log(world: World, topics: Topics) -> None:
    w = world
    kept, gone = w.terms(categories=["Observation"]), w.terms(grantee=w.org)
    w.grant(kept)
    w.grant(gone)
    w.stub.RevokeConsent(pb.RevokeConsentRequest(consent_id=gone.consent_id), metadata=w.patient.metadata, timeout=15)
    # Wait on the log, not a clock: the revocation follows both grants on the
    # patient's partition, so once the mirror has applied it the table holds
    # everything the log says and nothing more can arrive.
    published = await events_when(topics.consent_events, lambda found: bool(payloads(found, pb.ConsentRevoked)))
    revocation = next(e.event_id for e in published if e.payload.Is(pb.ConsentRevoked.DESCRIPTOR))
    conn = await asyncpg.connect(w.consent.env["MEDLEDGER_CONSENT_DATABASE_URL"])
    try:
        deadline = time.monotonic() + 10
        while not await conn.fetchval("SELECT count(*) FROM applied_events WHERE event_id = $1", revocation):
            assert time.monotonic() < deadline, "the mirror did not apply the revocation within 10 s"
            await asyncio.sleep(0.05)
        rows = {r["consent_id"]: r for r in await conn.fetch("SELECT * FROM consents")}
        tracked = await conn.fetchval("SELECT count(*) FROM applied_events")
    finally:
        await conn.close()
    assert rows[kept.consent_id]["revoked_at"] is None and rows[gone.consent_id]["revoked_by"] == w.patient.identity_id
    assert rows[kept.consent_id]["purposes"] == ["TREAT"] and rows[kept.consent_id]["categories"] == ["Observation"]
    assert rows[gone.consent_id]["grantee_kind"] == "GRANTEE_KIND_ORGANIZATION"
    assert bytes(rows[kept.consent_id]["terms"]) == canonical_terms(kept)
    assert tracked == 3


def test_organization_grant_ends_with_the_membership(world: World) -> None:
    w = world
    nurse = w.identity.practitioner(w.org, "nurse")
    t = w.terms(grantee=w.org)
    assert w.grant(t).grantee_kind == pb.GRANTEE_KIND_ORGANIZATION
    assert w.check(nurse).reason == pb.REASON_ORGANIZATION_CONSENT
    membership = next(m for m in w.identity.stub.GetIdentity(
        identity_pb2.GetIdentityRequest(identity_id=nurse.identity_id), metadata=nurse.metadata, timeout=5
    ).memberships if m.active)
    w.identity.stub.EndMembership(identity_pb2.EndMembershipRequest(membership_id=membership.membership_id),
                                  metadata=w.org.metadata, timeout=15)
    w.identity.login(nurse)  # a token issued after the membership ended
    wait_until(lambda: w.check(nurse).reason == pb.REASON_MEMBERSHIP_INACTIVE, 5, 0.1, "membership end to deny")
    assert w.check().decision == ALLOW  # the doctor's membership is untouched


async def test_break_glass_rules(world: World, topics: Topics) -> None:
    w = world
    loner = w.identity.register("PRACTITIONER", w.org, "IAL2")  # no membership
    request = pb.InvokeBreakGlassRequest(patient_id=w.patient.identity_id, justification=JUSTIFICATION, reason=LIFE_THREATENING)
    assert status_of(lambda: w.stub.InvokeBreakGlass(request, metadata=loner.metadata, timeout=15)) == grpc.StatusCode.PERMISSION_DENIED
    assert status_of(lambda: w.stub.InvokeBreakGlass(request, metadata=w.patient.metadata, timeout=15)) == grpc.StatusCode.PERMISSION_DENIED
    no_justification = pb.InvokeBreakGlassRequest(patient_id=w.patient.identity_id, reason=LIFE_THREATENING)
    no_code = pb.InvokeBreakGlassRequest(patient_id=w.patient.identity_id, justification=JUSTIFICATION)
    for incomplete in (no_justification, no_code):
        assert status_of(lambda: w.stub.InvokeBreakGlass(incomplete, metadata=w.doc.metadata, timeout=15)) == grpc.StatusCode.INVALID_ARGUMENT
    assert w.check(purpose=EMERGENCY).reason == pb.REASON_BREAK_GLASS_REQUIRED
    record = w.stub.InvokeBreakGlass(request, metadata=w.doc.metadata, timeout=15)
    assert record.review_required and record.organization_id == w.org.identity_id
    assert (record.reason, record.review_status) == (LIFE_THREATENING, PENDING)
    allowed = w.check(purpose=EMERGENCY)
    assert (allowed.decision, allowed.reason, allowed.break_glass_id) == (ALLOW, pb.REASON_BREAK_GLASS, record.break_glass_id)
    assert w.check(purpose=TREAT).decision == DENY
    assert w.check(loner, purpose=EMERGENCY).decision == DENY
    listed = w.stub.ListConsents(pb.ListConsentsRequest(patient_id=w.patient.identity_id), metadata=w.patient.metadata, timeout=5)
    (shown,) = listed.break_glass
    assert shown.justification == request.justification and shown.practitioner_id == w.doc.identity_id
    raw = [e for e in await read_topic(topics.consent_events) if e.event_type == "medledger.v1.BreakGlassInvoked"]
    assert len(raw) == 1 and b"allergies" not in raw[0].SerializeToString()  # no free text on the event


def test_views_are_for_the_patient_representatives_and_auditors(world: World) -> None:
    w = world
    t = w.terms(grantee=w.org, purposes=[TREAT, pb.PURPOSE_RESEARCH])
    w.grant(t)
    patient_id = w.patient.identity_id
    ask = pb.WhoCanAccessRequest(patient_id=patient_id)
    who = w.stub.WhoCanAccess(ask, metadata=w.patient.metadata, timeout=5)
    assert [p.purpose for p in who.by_purpose] == [TREAT, pb.PURPOSE_RESEARCH]
    assert list(who.by_purpose[0].grantees[0].members) == [w.doc.identity_id]
    auditor = w.identity.auditor()
    assert w.stub.ListConsents(pb.ListConsentsRequest(patient_id=patient_id), metadata=auditor.metadata, timeout=5).consents
    for outsider in (w.doc, w.service):
        assert status_of(lambda: w.stub.WhoCanAccess(ask, metadata=outsider.metadata, timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
    # A representative registered by the patient's organization may view and sign.
    guardian = w.identity.patient(w.org)
    assert status_of(lambda: w.stub.ListConsents(pb.ListConsentsRequest(patient_id=patient_id), metadata=guardian.metadata,
                                                 timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
    w.appoint(guardian)
    assert w.stub.ListConsents(pb.ListConsentsRequest(patient_id=patient_id), metadata=guardian.metadata, timeout=5).consents
    by_guardian = terms(patient_id, w.doc.identity_id, signer_id=guardian.identity_id, signer_key_id=guardian.key_id)
    assert w.grant(by_guardian, key=guardian.private_key, by=guardian).signer_role == pb.SIGNER_ROLE_REPRESENTATIVE


def test_fhir_export_validates(world: World) -> None:
    w = world
    t = w.terms(purposes=[TREAT, pb.PURPOSE_PAYMENT], categories=["Observation", "DiagnosticReport"])
    w.grant(t)
    exported = w.stub.ExportFhirConsent(pb.ExportFhirConsentRequest(consent_id=t.consent_id), metadata=w.patient.metadata, timeout=5)
    resource = FhirConsent.model_validate_json(exported.json)
    assert resource.id == t.consent_id and resource.status == "active"
    provision = json.loads(exported.json)["provision"]
    assert [p["code"] for p in provision["purpose"]] == ["TREAT", "HPAYMT"]
    assert provision["actor"][0]["reference"]["reference"] == f"Practitioner/{w.doc.identity_id}"
    by_grantee = w.stub.ExportFhirConsent(pb.ExportFhirConsentRequest(consent_id=t.consent_id), metadata=w.doc.metadata, timeout=5)
    assert by_grantee.json == exported.json
    outsider = w.identity.practitioner(w.identity.organization())
    assert status_of(lambda: w.stub.ExportFhirConsent(pb.ExportFhirConsentRequest(consent_id=t.consent_id),
                                                      metadata=outsider.metadata, timeout=5)) == grpc.StatusCode.PERMISSION_DENIED


def test_revocation_reaches_another_replica_before_revoke_returns(
    world: World, spawn: Callable[..., ServiceProcess], tmp_path: Path
) -> None:
    w = world
    _, other = start_consent(spawn, consent_env(w.identity, tmp_path))
    t = w.terms()
    w.grant(t)
    wait_until(lambda: w.check(stub=other).decision == ALLOW, 5, 0.05, "grant on the second replica")
    w.stub.RevokeConsent(pb.RevokeConsentRequest(consent_id=t.consent_id), metadata=w.patient.metadata, timeout=15)
    assert w.check(stub=other).decision == DENY
    assert w.check().decision == DENY


def test_decisions_carry_the_ledger_index_once_sequenced(world: World, spawn: Callable[..., ServiceProcess]) -> None:
    w = world
    spawn("ledger").wait_serving()
    t = w.terms()
    w.grant(t)
    get = pb.GetConsentRequest(consent_id=t.consent_id)
    wait_until(lambda: w.stub.GetConsent(get, metadata=w.patient.metadata, timeout=5).HasField("ledger_index"),
               20, 0.2, "the grant's ledger index")
    index = w.stub.GetConsent(get, metadata=w.patient.metadata, timeout=5).ledger_index
    decision = w.check()
    assert decision.consent_id == t.consent_id and decision.HasField("consent_ledger_index")
    assert decision.consent_ledger_index == index


async def test_forged_consent_events_grant_nothing(world: World, topics: Topics) -> None:
    """An attacker with write access to consent.events publishes a grant for
    the patient's records, forged every way it can be; none is listed or
    decided on, nor mirrored. The same event signed with consent's own key
    (the control) is, so the forgeries fail on authentication alone."""
    w = world
    attacker = w.identity.practitioner(w.org)
    t = w.terms(grantee=attacker)
    request = grant_request(w.patient.private_key, t)
    payload = pb.ConsentGranted(
        terms=t, signature=request.signature, grantee_kind=pb.GRANTEE_KIND_PRACTITIONER,
        signer_role=pb.SIGNER_ROLE_PATIENT, submitted_by=w.patient.identity_id,
    )
    genuine = envelope(payload, aggregate_id=w.patient.identity_id, producer="consent", actor=w.patient.identity_id)

    def widen(p: Message) -> None:  # the replayed grant, retargeted to every purpose
        assert isinstance(p, pb.ConsentGranted)
        p.terms.purposes.append(pb.PURPOSE_RESEARCH)

    forged = PRODUCERS.forgeries(genuine, not_allowed="records", tamper=widen)
    await produce_raw(topics.consent_events, forged.values(), key=w.patient.identity_id)
    real = w.terms()
    w.grant(real)  # a command reads the log to its end first: every forgery has been seen
    listed = w.stub.ListConsents(pb.ListConsentsRequest(patient_id=w.patient.identity_id), metadata=w.patient.metadata, timeout=5)
    assert [c.terms.consent_id for c in listed.consents] == [real.consent_id]
    assert w.check(requester=attacker).decision == DENY
    url = w.consent.env["MEDLEDGER_CONSENT_DATABASE_URL"]

    async def mirrored() -> set[str]:
        conn = await asyncpg.connect(url)
        try:
            return {r["consent_id"] for r in await conn.fetch("SELECT consent_id FROM consents")}
        finally:
            await conn.close()

    deadline = time.monotonic() + 10
    while real.consent_id not in await mirrored() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert await mirrored() == {real.consent_id}
    # the control: the same event, signed by the consent service's key
    await produce_raw(topics.consent_events, [PRODUCERS.seal(genuine)], key=w.patient.identity_id)
    wait_until(lambda: w.check(requester=attacker).decision == ALLOW, 10, what="the genuine grant to apply")


async def fetch(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def test_check_access_decides_only_for_the_tokens_subject(world: World, topics: Topics) -> None:
    """A service (or anyone) cannot get a decision — or a ledger entry — in
    another identity's name: only the reader's own, forwarded token counts."""
    w = world
    w.grant(w.terms())
    attacker = w.identity.practitioner(w.org)
    patient_id = w.patient.identity_id

    def ask(by: Party, **fields: object) -> grpc.StatusCode:
        request = pb.CheckAccessRequest(patient_id=patient_id, purpose=TREAT, category="Observation")
        for name, value in fields.items():
            setattr(request, name, value)
        return status_of(lambda: w.stub.CheckAccess(request, metadata=by.metadata, timeout=5))

    assert ask(w.service, requester_id=w.doc.identity_id) == grpc.StatusCode.PERMISSION_DENIED
    assert ask(w.service) == grpc.StatusCode.PERMISSION_DENIED  # a SERVICE token decides for no one
    assert ask(attacker, requester_id=w.doc.identity_id) == grpc.StatusCode.PERMISSION_DENIED
    for bad in ({"category": "Coding"}, {"category": "observation"}, {"category": "X" * 100_000},
                {"category": "", "record_id": "a b"}, {"category": "", "record_id": "r" * 129},
                {"patient_id": "pat\x00ient"}, {"patient_id": "p" * 129}):
        assert ask(w.doc, **bad) == grpc.StatusCode.INVALID_ARGUMENT, bad
    assert w.check(attacker).decision == DENY  # the attacker's own decision: no consent names it
    forwarded = w.check()  # the records service forwarding the doctor's own token
    assert forwarded.decision == ALLOW
    events = await events_when(topics.access_events, lambda found: forwarded.decision_event_id in {e.event_id for e in found})
    decided = payloads(events, pb.AccessDecided)
    # the refused calls recorded nothing (same patient, same partition: they would precede the ALLOW)
    assert [(d.requester_id, d.asked_by, d.decision) for d in decided] == [
        (attacker.identity_id, attacker.identity_id, DENY), (w.doc.identity_id, w.doc.identity_id, ALLOW),
    ]
    assert max(len(e.SerializeToString()) for e in events) < 2048


async def test_break_glass_is_reviewed_once_by_the_organization_or_an_auditor(world: World, topics: Topics) -> None:
    w = world
    other_org = w.identity.organization()
    auditor = w.identity.auditor()
    record = w.invoke()
    assert [b.break_glass_id for b in w.pending(w.org).break_glass] == [record.break_glass_id]
    shown = w.pending(auditor).break_glass
    assert [(b.break_glass_id, b.justification) for b in shown] == [(record.break_glass_id, JUSTIFICATION)]
    assert list(w.pending(auditor, other_org.identity_id).break_glass) == []
    assert list(w.pending(other_org).break_glass) == []
    assert status_of(lambda: w.pending(other_org, w.org.identity_id)) == grpc.StatusCode.PERMISSION_DENIED
    assert status_of(lambda: w.pending(w.doc)) == grpc.StatusCode.PERMISSION_DENIED

    def review(by: Party, outcome: pb.ReviewStatus.ValueType = APPROVED, note: str = "confirmed with the ER log") -> pb.BreakGlass:
        request = pb.ReviewBreakGlassRequest(break_glass_id=record.break_glass_id, outcome=outcome, note=note)
        return w.stub.ReviewBreakGlass(request, metadata=by.metadata, timeout=15)

    other_orgs_auditor = w.identity.organization_auditor(other_org)
    for outsider in (other_org, other_orgs_auditor, w.doc, w.patient, w.service):
        assert status_of(lambda: review(outsider)) == grpc.StatusCode.PERMISSION_DENIED
    assert status_of(lambda: review(w.org, pb.REVIEW_STATUS_PENDING)) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_of(lambda: review(w.org, note=" ")) == grpc.StatusCode.INVALID_ARGUMENT
    reviewed = review(w.org)
    assert (reviewed.review_status, reviewed.reviewed_by, reviewed.review_note) == (
        APPROVED, w.org.identity_id, "confirmed with the ER log")
    assert status_of(lambda: review(auditor, INAPPROPRIATE)) == grpc.StatusCode.FAILED_PRECONDITION
    assert list(w.pending(w.org).break_glass) == []
    (seen,) = w.listed().break_glass  # the patient sees the access and its review
    assert (seen.reason, seen.review_status, seen.reviewed_by, seen.review_note, seen.justification) == (
        LIFE_THREATENING, APPROVED, w.org.identity_id, "confirmed with the ER log", JUSTIFICATION)
    assert seen.HasField("reviewed_at")
    # on the log: the review with the note's hash, never its text
    found = await events_when(topics.consent_events, lambda found: bool(payloads(found, pb.BreakGlassReviewed)))
    (event,) = payloads(found, pb.BreakGlassReviewed)
    assert (event.outcome, event.reviewer_id) == (APPROVED, w.org.identity_id)
    assert event.note_sha256 == hashlib.sha256(b"confirmed with the ER log").digest()
    assert not [e for e in found if b"ER log" in e.SerializeToString() or b"allergies" in e.SerializeToString()]
    # at rest: sealed, no plaintext; the review status is where operators' metrics count it
    url = w.consent.env["MEDLEDGER_CONSENT_DATABASE_URL"]
    (row,) = await fetch(url, "SELECT * FROM break_glass")
    assert row["justification"] is None and b"allergies" not in bytes(row["justification_sealed"])
    assert (row["review_status"], row["reason"]) == ("APPROVED", "BREAK_GLASS_REASON_LIFE_THREATENING")
    (note,) = await fetch(url, "SELECT * FROM review_notes")
    assert b"ER log" not in bytes(note["note_sealed"]) and note["reviewer_id"] == w.org.identity_id


def test_break_glass_has_a_daily_limit_and_an_inappropriate_review_ends_it(world: World) -> None:
    w = world
    patients = [w.patient, w.identity.patient(w.org), w.identity.patient(w.org)]
    records = [w.invoke(patient=p) for p in patients]
    assert status_of(lambda: w.invoke(patient=w.identity.patient(w.org))) == grpc.StatusCode.RESOURCE_EXHAUSTED
    colleague = w.identity.practitioner(w.org)
    assert w.invoke(doc=colleague).review_status == PENDING  # the limit is per practitioner
    for p in patients:
        assert w.check(purpose=EMERGENCY, patient=p).reason == pb.REASON_BREAK_GLASS
    auditor = w.identity.auditor()
    w.stub.ReviewBreakGlass(pb.ReviewBreakGlassRequest(
        break_glass_id=records[0].break_glass_id, outcome=INAPPROPRIATE, note="no emergency on record"),
        metadata=auditor.metadata, timeout=15)
    assert w.check(purpose=EMERGENCY, patient=patients[0]).reason == pb.REASON_BREAK_GLASS_REQUIRED
    assert w.check(purpose=EMERGENCY, patient=patients[1]).reason == pb.REASON_BREAK_GLASS


async def test_representatives_need_the_patients_signature_or_a_reviewed_legal_basis(world: World, topics: Topics) -> None:
    w = world
    patient_id = w.patient.identity_id
    guardian, chosen = w.identity.patient(w.org), w.identity.patient(w.org)
    other_org = w.identity.organization()
    bare = pb.RegisterRepresentativeRequest(patient_id=patient_id, representative_id=guardian.identity_id)
    assert status_of(lambda: w.stub.RegisterRepresentative(bare, metadata=w.org.metadata, timeout=15)) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_of(lambda: w.appoint(guardian, basis=pb.LEGAL_BASIS_UNSPECIFIED)) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_of(lambda: w.appoint(guardian, evidence=b"short")) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_of(lambda: w.appoint(guardian, by=other_org)) == grpc.StatusCode.PERMISSION_DENIED
    assert status_of(lambda: w.appoint(guardian, by=w.patient)) == grpc.StatusCode.PERMISSION_DENIED  # unsigned

    # The registering organization, with legal basis and evidence: flagged, listed, reviewable.
    appointed = w.appoint(guardian)
    assert (appointed.active, appointed.review_status, appointed.legal_basis, appointed.appointed_by) == (
        True, PENDING, pb.LEGAL_BASIS_COURT_ORDER, w.org.identity_id)
    assert [r.representation_id for r in w.listed().representations] == [appointed.representation_id]
    auditor = w.identity.auditor()
    assert [r.representation_id for r in w.pending(auditor).representations] == [appointed.representation_id]
    by_guardian = terms(patient_id, w.doc.identity_id, signer_id=guardian.identity_id, signer_key_id=guardian.key_id)
    assert w.grant(by_guardian, key=guardian.private_key, by=guardian).signer_role == pb.SIGNER_ROLE_REPRESENTATIVE
    review = pb.ReviewRepresentationRequest(representation_id=appointed.representation_id, outcome=INAPPROPRIATE,
                                            note="evidence does not name this person")
    assert status_of(lambda: w.stub.ReviewRepresentation(review, metadata=w.org.metadata, timeout=15)) == grpc.StatusCode.PERMISSION_DENIED
    ended = w.stub.ReviewRepresentation(review, metadata=auditor.metadata, timeout=15)
    assert (ended.active, ended.review_status, ended.ended_by) == (False, INAPPROPRIATE, auditor.identity_id)
    again = terms(patient_id, w.doc.identity_id, signer_id=guardian.identity_id, signer_key_id=guardian.key_id)
    assert status_of(lambda: w.grant(again, key=guardian.private_key, by=guardian)) == grpc.StatusCode.PERMISSION_DENIED

    # The patient's own signed appointment: no review needed, verifiable from the log.
    appointment = pb.RepresentativeAppointment(
        appointment_id="appt-1", patient_id=patient_id, representative_id=chosen.identity_id,
        signer_key_id=w.patient.key_id, signed_at=ts(datetime.now(timezone.utc)),
    )
    encoded, signature = sign_appointment(w.patient.private_key, appointment)
    _, forged = sign_appointment(chosen.private_key, appointment)  # the would-be representative signs for the patient
    signed = pb.RegisterRepresentativeRequest(
        patient_id=patient_id, representative_id=chosen.identity_id, appointment=encoded, signature=forged)
    assert status_of(lambda: w.stub.RegisterRepresentative(signed, metadata=chosen.metadata, timeout=15)) == grpc.StatusCode.PERMISSION_DENIED
    signed.signature = signature
    mine = w.stub.RegisterRepresentative(signed, metadata=w.patient.metadata, timeout=15)
    assert (mine.representation_id, mine.legal_basis, mine.review_status, mine.appointed_by) == (
        "appt-1", pb.LEGAL_BASIS_PATIENT_SIGNED, pb.REVIEW_STATUS_NOT_REQUIRED, patient_id)
    assert status_of(lambda: w.stub.RegisterRepresentative(signed, metadata=w.patient.metadata, timeout=15)) == grpc.StatusCode.ALREADY_EXISTS
    stop = pb.EndRepresentationRequest(patient_id=patient_id, representative_id=chosen.identity_id)
    assert status_of(lambda: w.stub.EndRepresentation(stop, metadata=other_org.metadata, timeout=15)) == grpc.StatusCode.PERMISSION_DENIED
    stopped = w.stub.EndRepresentation(stop, metadata=w.patient.metadata, timeout=15)
    assert (stopped.active, stopped.ended_by) == (False, patient_id)

    found = await events_when(topics.consent_events, lambda found: len(payloads(found, pb.RepresentationEnded)) == 2)
    registered = {e.representation_id: e for e in payloads(found, pb.RepresentativeRegistered)}
    by_patient = registered["appt-1"]
    w.patient.private_key.public_key().verify(by_patient.signature, APPOINTMENT_CONTEXT + by_patient.appointment)
    assert registered[appointed.representation_id].evidence_sha256 == hashlib.sha256(b"court order 2024/117").digest()
    assert [r.outcome for r in payloads(found, pb.RepresentationReviewed)] == [INAPPROPRIATE]


def test_consents_are_signed_with_the_key_current_at_submission(world: World) -> None:
    """A key rotated out (never revoked) cannot sign backdated terms, and old
    signatures are not accepted however they are dated."""
    w = world
    stale = w.terms(signed_at=datetime.now(timezone.utc) - timedelta(hours=25))
    assert status_of(lambda: w.grant(stale)) == grpc.StatusCode.INVALID_ARGUMENT
    before_rotation = datetime.now(timezone.utc)  # the old key was in effect then
    old_key = w.patient.private_key
    new_key = generate_key()
    w.identity.stub.RotateKey(identity_pb2.RotateKeyRequest(identity_id=w.patient.identity_id, public_key=raw_public(new_key)),
                              metadata=w.patient.metadata, timeout=15)
    backdated = terms(w.patient.identity_id, w.doc.identity_id, signer_key_id=w.patient.key_id, signed_at=before_rotation)
    assert status_of(lambda: w.grant(backdated, key=old_key)) == grpc.StatusCode.PERMISSION_DENIED
    w.patient.private_key = new_key
    current = terms(w.patient.identity_id, w.doc.identity_id, signer_key_id=w.patient.key_id)
    assert w.grant(current).status == pb.CONSENT_STATUS_ACTIVE


async def test_justifications_are_sealed_under_the_data_key_the_database_knows(
    world: World, spawn: Callable[..., ServiceProcess], tmp_path: Path
) -> None:
    """A justification stored in plaintext (before sealing existed) is sealed
    at the next start; a service given another data key refuses to start
    rather than fail to open what it holds."""
    w = world
    record = w.invoke()
    url = w.consent.env["MEDLEDGER_CONSENT_DATABASE_URL"]
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "UPDATE break_glass SET justification = $2, justification_sealed = NULL, kek_id = NULL, wrapped_key = NULL"
            " WHERE break_glass_id = $1", record.break_glass_id, JUSTIFICATION,
        )
    finally:
        await conn.close()
    w.consent.stop()
    other_key = tmp_path / "another-consent-data.key"
    other_key.write_bytes(new_data_key())
    wrong = spawn("consent", MEDLEDGER_CONSENT_PORT=str(free_port()), MEDLEDGER_CONSENT_DATA_KEY_FILE=str(other_key),
                  **consent_env(w.identity, tmp_path))
    with pytest.raises(AssertionError, match="MEDLEDGER_CONSENT_DATA_KEY_FILE to the original key"):
        wrong.wait_serving(30)
    _, stub = start_consent(spawn, consent_env(w.identity, tmp_path))
    (row,) = await fetch(url, "SELECT * FROM break_glass")
    assert row["justification"] is None and b"allergies" not in bytes(row["justification_sealed"])
    listed = stub.ListConsents(pb.ListConsentsRequest(patient_id=w.patient.identity_id), metadata=w.patient.metadata, timeout=5)
    assert [b.justification for b in listed.break_glass] == [JUSTIFICATION]
