"""The consent domain without I/O: validating terms, who may sign, grant,
revoke, expire, break-glass and representative rules, and evolve's idempotence."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from google.protobuf.message import Message

from medledger.consent import domain, validation
from medledger.consent.domain import IdentityFacts, PatientState, Recorded
from medledger.consent.fhir import is_resource_type
from medledger.runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from medledger.v1 import consent_pb2 as pb
from medledger.testing.consent import terms, ts

NOW = datetime.now(timezone.utc)


@pytest.fixture(autouse=True)
def _fresh_now() -> None:
    """NOW is each test's own moment: terms() defaults are relative to the real
    clock, and a long suite runs these tests minutes after import."""
    global NOW
    NOW = datetime.now(timezone.utc)
WINDOW = validation.SigningWindow(skew=timedelta(minutes=5), max_age=timedelta(hours=24))
DOC = IdentityFacts("doc", "PRACTITIONER", True, frozenset({"org"}))
ORG = IdentityFacts("org", "ORGANIZATION", True)
PATIENT = IdentityFacts("pat", "PATIENT", True, registered_by="org")


def validate(t: pb.ConsentTerms) -> None:
    validation.validate_terms(t, NOW, WINDOW, is_resource_type)


def fold(state: PatientState, *events: Message, at: datetime | None = None) -> PatientState:
    for i, event in enumerate(events):
        state = domain.evolve(state, Recorded(f"e{i}-{id(event)}", at or NOW, "", event))
    return state


def granted_state(t: pb.ConsentTerms, grantee: IdentityFacts = DOC) -> PatientState:
    state = PatientState(t.patient_id)
    return fold(state, *domain.decide(state, domain.GrantConsent(t, b"s" * 64, grantee, t.patient_id)))


def test_purpose_codes_are_the_hl7_purpose_of_use_codes() -> None:
    assert dict(domain.PURPOSE_CODES) == {
        pb.PURPOSE_TREATMENT: "TREAT", pb.PURPOSE_PAYMENT: "HPAYMT", pb.PURPOSE_OPERATIONS: "HOPERAT",
        pb.PURPOSE_RESEARCH: "HRESCH", pb.PURPOSE_EMERGENCY: "ETREAT",
    }
    assert pb.PURPOSE_EMERGENCY not in domain.GRANTABLE_PURPOSES


def test_valid_terms_pass() -> None:
    validate(terms("pat", "doc", purposes=[pb.PURPOSE_TREATMENT, pb.PURPOSE_RESEARCH], categories=["Observation"]))
    validate(terms("pat", "doc", record_ids=["rec-1", "rec-2"]))


@pytest.mark.parametrize("change, message", [
    (lambda t: t.ClearField("purposes"), "purposes is empty"),
    (lambda t: t.purposes.append(pb.PURPOSE_EMERGENCY), "cannot be granted"),
    (lambda t: t.purposes.append(pb.PURPOSE_TREATMENT), "twice"),
    (lambda t: t.valid_until.CopyFrom(ts(NOW - timedelta(days=2))), "before it starts"),
    (lambda t: t.valid_until.CopyFrom(t.valid_from), "before it starts"),
    (lambda t: t.ClearField("valid_until"), "valid_until is required"),
    (lambda t: t.signed_at.CopyFrom(ts(NOW + timedelta(hours=1))), "future"),
    (lambda t: t.signed_at.CopyFrom(ts(NOW - timedelta(hours=25))), "sign again"),
    (lambda t: setattr(t, "consent_id", ""), "consent_id is required"),
    (lambda t: setattr(t, "consent_id", "bad id with spaces"), "consent_id must be"),
    (lambda t: setattr(t, "grantee_id", "pat"), "own consent"),
    (lambda t: setattr(t, "signer_key_id", ""), "signer_key_id is required"),
    (lambda t: t.scope.CopyFrom(pb.ConsentScope()), "scope is empty"),
    (lambda t: t.scope.categories.append("Observation"), "excludes"),
    (lambda t: t.scope.CopyFrom(pb.ConsentScope(categories=["NotAResource"])), "not a FHIR R4 resource type"),
    (lambda t: t.scope.CopyFrom(pb.ConsentScope(categories=["Coding"])), "not a FHIR R4 resource type"),
    (lambda t: t.scope.CopyFrom(pb.ConsentScope(categories=["observation"])), "not a FHIR R4 resource type"),
    (lambda t: t.scope.CopyFrom(pb.ConsentScope(record_ids=["a", "a"])), "twice"),
])
def test_bad_terms_are_invalid_arguments(change: object, message: str) -> None:
    t = terms("pat", "doc")
    change(t)  # type: ignore[operator]
    with pytest.raises(InvalidArgument, match=message):
        validate(t)


def test_a_window_that_already_ended_is_refused() -> None:
    start = NOW - timedelta(days=3)
    with pytest.raises(InvalidArgument, match="already ended"):
        validate(terms("pat", "doc", valid_from=start, valid_until=start + timedelta(days=1)))


def test_only_the_patient_or_a_representative_may_sign() -> None:
    state = PatientState("pat", representatives=frozenset({"mum"}))
    assert domain.signer_role(terms("pat", "doc"), state) == pb.SIGNER_ROLE_PATIENT
    assert domain.signer_role(terms("pat", "doc", signer_id="mum"), state) == pb.SIGNER_ROLE_REPRESENTATIVE
    with pytest.raises(PermissionDenied, match="neither patient"):
        domain.signer_role(terms("pat", "doc", signer_id="stranger"), state)


def test_grantees_are_active_practitioners_or_organizations() -> None:
    assert domain.grantee_kind(DOC) == pb.GRANTEE_KIND_PRACTITIONER
    assert domain.grantee_kind(ORG) == pb.GRANTEE_KIND_ORGANIZATION
    with pytest.raises(InvalidArgument, match="only practitioners and organizations"):
        domain.grantee_kind(IdentityFacts("p2", "PATIENT", True))
    with pytest.raises(FailedPrecondition, match="revoked"):
        domain.grantee_kind(IdentityFacts("doc", "PRACTITIONER", False))


def test_grant_records_the_signed_terms_and_evolves_state() -> None:
    t = terms("pat", "org")
    state = PatientState("pat")
    (event,) = domain.decide(state, domain.GrantConsent(t, b"s" * 64, ORG, "portal"))
    assert isinstance(event, pb.ConsentGranted)
    assert event.terms == t and event.grantee_kind == pb.GRANTEE_KIND_ORGANIZATION and event.submitted_by == "portal"
    after = fold(state, event)
    consent = after.consents[t.consent_id]
    assert consent.terms() == t and consent.encoded_terms == t.SerializeToString(deterministic=True)
    assert consent.status(NOW) == pb.CONSENT_STATUS_ACTIVE
    assert after.consents_for("org") == (consent,)
    with pytest.raises(AlreadyExists):
        domain.decide(after, domain.GrantConsent(t, b"s" * 64, ORG, "portal"))


def test_revoke_by_the_patient_and_idempotence() -> None:
    t = terms("pat", "doc")
    state = granted_state(t)
    (event,) = domain.decide(state, domain.RevokeConsent(t.consent_id, "pat"))
    after = fold(state, event)
    assert after.consents[t.consent_id].status(NOW) == pb.CONSENT_STATUS_REVOKED
    assert domain.decide(after, domain.RevokeConsent(t.consent_id, "pat")) == []
    assert fold(after, event) is after  # a repeated event changes nothing


def test_revoke_of_someone_elses_or_an_unknown_consent_is_refused() -> None:
    t = terms("pat", "doc")
    state = granted_state(t)
    with pytest.raises(PermissionDenied):
        domain.decide(state, domain.RevokeConsent(t.consent_id, "doc"))
    with pytest.raises(NotFound):
        domain.decide(state, domain.RevokeConsent("nope", "pat"))


def test_a_representative_may_revoke() -> None:
    t = terms("pat", "doc")
    state = fold(granted_state(t), pb.RepresentativeRegistered(patient_id="pat", representative_id="mum"))
    assert domain.decide(state, domain.RevokeConsent(t.consent_id, "mum"))


def test_expiry_is_recorded_once_after_the_window() -> None:
    start = NOW - timedelta(hours=2)
    t = terms("pat", "doc", valid_from=start, valid_until=start + timedelta(hours=1))
    state = granted_state(t)
    assert state.consents[t.consent_id].status(NOW) == pb.CONSENT_STATUS_EXPIRED
    assert domain.decide(state, domain.ExpireConsent(t.consent_id, start)) == []
    (event,) = domain.decide(state, domain.ExpireConsent(t.consent_id, NOW))
    assert isinstance(event, pb.ConsentExpired)
    after = fold(state, event)
    assert domain.decide(after, domain.ExpireConsent(t.consent_id, NOW)) == []


def test_a_window_in_the_future_is_pending() -> None:
    t = terms("pat", "doc", valid_from=NOW + timedelta(days=1))
    assert granted_state(t).consents[t.consent_id].status(NOW) == pb.CONSENT_STATUS_PENDING


def test_break_glass_needs_an_active_practitioner_with_a_membership() -> None:
    assert domain.break_glass_organization(DOC, "") == "org"
    assert domain.break_glass_organization(DOC, "org") == "org"
    with pytest.raises(PermissionDenied, match="no active membership"):
        domain.break_glass_organization(DOC, "other")
    with pytest.raises(PermissionDenied, match="needs an active organization membership"):
        domain.break_glass_organization(IdentityFacts("doc", "PRACTITIONER", True), "")
    with pytest.raises(PermissionDenied, match="active practitioners"):
        domain.break_glass_organization(IdentityFacts("aud", "AUDITOR", True, frozenset({"org"})), "")
    with pytest.raises(PermissionDenied, match="active practitioners"):
        domain.break_glass_organization(IdentityFacts("doc", "PRACTITIONER", False, frozenset({"org"})), "")
    with pytest.raises(InvalidArgument, match="name organization_id"):
        domain.break_glass_organization(IdentityFacts("doc", "PRACTITIONER", True, frozenset({"a", "b"})), "")


def test_break_glass_needs_a_justification() -> None:
    assert validation.validate_justification("  unconscious, allergies unknown  ") == "unconscious, allergies unknown"
    for text in ("", "   ", "because"):
        with pytest.raises(InvalidArgument, match="justification"):
            validation.validate_justification(text)


def test_break_glass_is_recorded_flagged_for_review_with_its_reason() -> None:
    reason = pb.BREAK_GLASS_REASON_PATIENT_UNABLE_TO_CONSENT
    command = domain.InvokeBreakGlass("bg-1", DOC, "", b"h" * 32, NOW + timedelta(hours=4), reason)
    (event,) = domain.decide(PatientState("pat"), command)
    assert isinstance(event, pb.BreakGlassInvoked)
    assert event.review_required and event.organization_id == "org" and event.justification_sha256 == b"h" * 32
    assert event.reason == reason
    record = fold(PatientState("pat"), event).break_glass["bg-1"]
    assert record.practitioner_id == "doc" and record.reason == reason and record.review.pending


def test_views_are_for_the_patient_representatives_and_auditors() -> None:
    state = PatientState("pat", representatives=frozenset({"mum"}))
    assert domain.may_view(state, "pat", "PATIENT")
    assert domain.may_view(state, "mum", "PATIENT")
    assert domain.may_view(state, "aud", "AUDITOR")
    assert not domain.may_view(state, "doc", "PRACTITIONER")
    assert not domain.may_view(state, "svc", "SERVICE")
