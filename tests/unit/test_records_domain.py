"""The records service's rules (medledger.records.domain): who may write for
a patient and why, amendments, who reads without asking consent, paging
tokens, signed statements and the research timeline."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from medledger.records import domain
from medledger.records.domain import (
    BreakGlassFact, ConsentFact, ListCursor, Party, PatientFacts, Reader, RecordHead,
)
from medledger.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from medledger.v1 import consent_pb2 as cpb
from medledger.v1 import records_pb2 as pb

NOW = datetime(2025, 6, 1, 12, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)
PATIENT = Party("patient", "PATIENT", True, registered_by="org-a")
DOC_A = Party("doc-a", "PRACTITIONER", True, organizations=frozenset({"org-a"}))
DOC_B = Party("doc-b", "PRACTITIONER", True, organizations=frozenset({"org-b"}))


def consent(grantee: str, purposes: tuple[int, ...] = (cpb.PURPOSE_TREATMENT,), revoked: bool = False,
            until: datetime = NOW + HOUR, record_ids: frozenset[str] = frozenset()) -> ConsentFact:
    return ConsentFact("c-" + grantee, grantee, frozenset(purposes), NOW - HOUR, until, revoked, record_ids)


def facts(*consents: ConsentFact, break_glass: tuple[BreakGlassFact, ...] = (), erased: datetime | None = None) -> PatientFacts:
    return PatientFacts(PATIENT, frozenset({"rep"}), consents, break_glass, erased)


def test_the_registering_organization_writes() -> None:
    grant = domain.authorize_write(DOC_A, "org-a", "patient", facts(), NOW)
    assert grant.basis == pb.WRITE_BASIS_REGISTERING_ORGANIZATION


def test_another_organization_writes_only_with_a_live_treatment_consent_or_break_glass() -> None:
    with pytest.raises(PermissionDenied):
        domain.authorize_write(DOC_B, "org-b", "patient", facts(), NOW)
    for useless in (consent("org-b", revoked=True), consent("org-b", until=NOW), consent("org-b", (cpb.PURPOSE_RESEARCH,)),
                    consent("org-c")):
        with pytest.raises(PermissionDenied):
            domain.authorize_write(DOC_B, "org-b", "patient", facts(useless), NOW)
    by_org = domain.authorize_write(DOC_B, "org-b", "patient", facts(consent("org-b")), NOW)
    assert (by_org.basis, by_org.consent_id) == (pb.WRITE_BASIS_CONSENT, "c-org-b")
    assert domain.authorize_write(DOC_B, "org-b", "patient", facts(consent("doc-b")), NOW).basis == pb.WRITE_BASIS_CONSENT
    glass = BreakGlassFact("bg-1", "doc-b", "org-b", NOW + HOUR)
    grant = domain.authorize_write(DOC_B, "org-b", "patient", facts(break_glass=(glass,)), NOW)
    assert (grant.basis, grant.break_glass_id) == (pb.WRITE_BASIS_BREAK_GLASS, "bg-1")
    expired = BreakGlassFact("bg-2", "doc-b", "org-b", NOW)
    with pytest.raises(PermissionDenied):
        domain.authorize_write(DOC_B, "org-b", "patient", facts(break_glass=(expired,)), NOW)


def test_no_one_writes_for_an_organization_they_are_not_an_active_member_of() -> None:
    with pytest.raises(PermissionDenied, match="membership"):
        domain.authorize_write(DOC_B, "org-a", "patient", facts(), NOW)
    revoked = Party("doc-a", "PRACTITIONER", False, organizations=frozenset({"org-a"}))
    for author in (revoked, None, Party("org-a", "ORGANIZATION", True, organizations=frozenset({"org-a"}))):
        with pytest.raises(PermissionDenied):
            domain.authorize_write(author, "org-a", "patient", facts(), NOW)


def test_unknown_patient_is_not_found_and_erased_patient_refuses_writes() -> None:
    with pytest.raises(NotFound):
        domain.authorize_write(DOC_A, "org-a", "nobody", PatientFacts(None), NOW)
    with pytest.raises(NotFound):
        domain.authorize_write(DOC_A, "org-a", "doc-b", PatientFacts(DOC_B), NOW)
    with pytest.raises(FailedPrecondition, match="erased"):
        domain.authorize_write(DOC_A, "org-a", "patient", facts(erased=NOW - HOUR), NOW)
    with pytest.raises(PermissionDenied):  # an outsider learns nothing about the erasure
        domain.authorize_write(DOC_B, "org-b", "patient", facts(erased=NOW - HOUR), NOW)


def test_amendments_follow_the_latest_version_of_the_custodian() -> None:
    head = RecordHead("rec", "patient", "Observation", "org-a", 2, b"\x02" * 32, NOW)
    good = pb.RecordAttestation(record_id="rec", version=3, patient_id="patient", organization_id="org-a",
                                category="Observation", previous_commitment=b"\x02" * 32)
    domain.check_amendment(good, head)
    cases: list[tuple[dict[str, Any], type[Exception]]] = [
        (dict(version=2), FailedPrecondition), (dict(version=4), FailedPrecondition),
        (dict(previous_commitment=b"\x01" * 32), FailedPrecondition), (dict(organization_id="org-b"), PermissionDenied),
        (dict(patient_id="other"), InvalidArgument), (dict(category="Condition"), InvalidArgument),
    ]
    for change, error in cases:
        bad = pb.RecordAttestation()
        bad.CopyFrom(good)
        for field, value in change.items():
            setattr(bad, field, value)
        with pytest.raises(error):
            domain.check_amendment(bad, head)


def reader(who: str, kind: str = "PRACTITIONER", purpose: cpb.Purpose.ValueType = cpb.PURPOSE_TREATMENT,
           orgs: frozenset[str] = frozenset()) -> Reader:
    return Reader(who, kind, purpose, "", orgs)


def test_readers_without_consent_are_the_patient_representatives_and_custodian_members() -> None:
    reps = frozenset({"rep"})
    assert domain.own_basis(reader("patient", "PATIENT", cpb.PURPOSE_UNSPECIFIED), "patient", reps, "org-a") == pb.DISCLOSURE_BASIS_PATIENT
    assert domain.own_basis(reader("rep", "PATIENT", cpb.PURPOSE_UNSPECIFIED), "patient", reps, "org-a") == pb.DISCLOSURE_BASIS_REPRESENTATIVE
    member = reader("doc-a", orgs=frozenset({"org-a"}))
    assert domain.own_basis(member, "patient", reps, "org-a") == pb.DISCLOSURE_BASIS_CUSTODIAN
    assert domain.own_basis(member, "patient", reps, "org-b") is None
    assert domain.own_basis(reader("stranger", "PATIENT", cpb.PURPOSE_UNSPECIFIED), "patient", reps, "org-a") is None
    research = reader("doc-a", purpose=cpb.PURPOSE_RESEARCH, orgs=frozenset({"org-a"}))
    assert domain.own_basis(research, "patient", reps, "org-a") is None  # research always needs a consent


def test_reader_checks() -> None:
    with pytest.raises(InvalidArgument, match="purpose"):
        domain.check_reader(reader("doc", purpose=cpb.PURPOSE_UNSPECIFIED))
    domain.check_reader(reader("patient", "PATIENT", cpb.PURPOSE_UNSPECIFIED))
    with pytest.raises(PermissionDenied):
        domain.check_reader(reader("svc", "SERVICE"))
    with pytest.raises(PermissionDenied, match="membership"):
        domain.check_reader(Reader("doc", "PRACTITIONER", cpb.PURPOSE_TREATMENT, "org-x", frozenset({"org-a"})))


def test_only_live_consents_make_records_askable_by_id() -> None:
    live = consent("doc-b", record_ids=frozenset({"r1"}))
    gone = consent("doc-c", revoked=True, record_ids=frozenset({"r2"}))
    assert domain.record_scoped([live, gone], NOW) == frozenset({"r1"})


def test_page_tokens_round_trip_and_reject_garbage() -> None:
    cursor = ListCursor(1_700_000_000_123_456, "rec-9")
    assert domain.decode_cursor(domain.encode_cursor(cursor)) == cursor
    assert cursor.created_at == datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=timezone.utc)
    for token in ("not-base64!!", "e30", "eyJjIjoiYSIsInIiOiJ4In0"):
        with pytest.raises(InvalidArgument, match="page_token"):
            domain.decode_cursor(token)
    assert domain.decode_version_token("") == 1
    with pytest.raises(InvalidArgument):
        domain.decode_version_token("-1")


def test_attestations_need_ids_a_commitment_and_a_fresh_signing_time() -> None:
    skew = timedelta(minutes=5)
    att = pb.RecordAttestation(record_id="r", version=1, patient_id="p", organization_id="o", author_id="a",
                               author_key_id="k", category="Observation", commitment=b"\0" * 32,
                               signed_at=domain.timestamp(NOW))
    assert domain.validate_attestation(att, NOW, skew, creating=True) == NOW
    with pytest.raises(InvalidArgument, match="version must be at least 2"):
        domain.validate_attestation(att, NOW, skew, creating=False)
    for change in (dict(record_id="bad id"), dict(commitment=b"\0"), dict(version=2), dict(previous_commitment=b"\1" * 32)):
        bad = pb.RecordAttestation()
        bad.CopyFrom(att)
        for field, value in change.items():
            setattr(bad, field, value)
        with pytest.raises(InvalidArgument):
            domain.validate_attestation(bad, NOW, skew, creating=True)
    for when in (NOW + 2 * skew, NOW - 2 * skew):
        stale = pb.RecordAttestation()
        stale.CopyFrom(att)
        stale.signed_at.CopyFrom(domain.timestamp(when))
        with pytest.raises(InvalidArgument, match="signed_at"):
            domain.validate_attestation(stale, NOW, skew, creating=True)


def test_results_before_the_protocol_are_flagged() -> None:
    e = domain.ArtifactEntry
    timeline = [e(pb.ARTIFACT_RESULTS, NOW), e(pb.ARTIFACT_DATASET, NOW), e(pb.ARTIFACT_PROTOCOL, NOW + HOUR),
                e(pb.ARTIFACT_ANALYSIS_PLAN, NOW + 2 * HOUR)]
    assert domain.before_protocol(timeline) == [True, False, False, False]
    assert domain.before_protocol([e(pb.ARTIFACT_ANALYSIS_PLAN, NOW)]) == [True]


def test_only_research_organizations_and_their_members_register_artifacts() -> None:
    lab = Party("lab", "ORGANIZATION", True, organization_type="RESEARCH")
    hospital = Party("hosp", "ORGANIZATION", True, organization_type="HOSPITAL")
    assert domain.research_organization("lab", "ORGANIZATION", "", lab, frozenset()) == "lab"
    assert domain.research_organization("doc", "PRACTITIONER", "lab", lab, frozenset({"lab"})) == "lab"
    with pytest.raises(PermissionDenied):
        domain.research_organization("doc", "PRACTITIONER", "lab", lab, frozenset({"other"}))
    with pytest.raises(PermissionDenied):
        domain.research_organization("hosp", "ORGANIZATION", "", hospital, frozenset())
    with pytest.raises(PermissionDenied):
        domain.research_organization("hosp", "ORGANIZATION", "lab", lab, frozenset())
