"""Bounded emergency access and reviewed appointments, without I/O (issue 9,
items 5, 6, 8, 9, 12): break-glass reason codes, the daily limit, reviews by
an auditor or the organization, an INAPPROPRIATE review ending access;
representatives appointed by the patient's signature or by the registering
organization with legal basis and evidence, who may end them; CheckAccess
input bounds and the largest decision event; the signing window and the
current-key rule; sealed texts."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TypedDict, Unpack

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import Message

from medledger.consent import domain, signing, validation
from medledger.consent.decisions import AccessQuery, check_access
from medledger.consent.domain import Actor, IdentityFacts, PatientState, Recorded
from medledger.consent.fhir import is_resource_type
from medledger.consent.projection import Projection
from medledger.consent.settings import ConsentSettings
from medledger.consent.signing import SigningKey, sign_appointment, verify_signed
from medledger.consent.store import TEXTS
from medledger.identity.vault import DEMOGRAPHICS, Vault
from medledger.ledger.intake import MAX_EVENT_BYTES
from medledger.runtime.envelope import envelope
from medledger.runtime.errors import (
    AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted, SettingsError,
)
from medledger.runtime.sealing import Sealer, SealError
from medledger.testing.consent import event, membership, registered, ts
from medledger.testing.stack import PRODUCERS
from medledger.v1 import consent_pb2 as pb

NOW = datetime.now(timezone.utc)
DOC = IdentityFacts("doc", "PRACTITIONER", True, frozenset({"org"}))
PATIENT = IdentityFacts("pat", "PATIENT", True, registered_by="org")
MUM = IdentityFacts("mum", "PATIENT", True)
AUDITOR, HOSPITAL, OTHER_HOSPITAL = Actor("aud", "AUDITOR"), Actor("org", "ORGANIZATION"), Actor("org2", "ORGANIZATION")
APPROVED, INAPPROPRIATE = pb.REVIEW_STATUS_APPROVED, pb.REVIEW_STATUS_INAPPROPRIATE
WINDOW = validation.SigningWindow(skew=timedelta(minutes=5), max_age=timedelta(hours=24))


def fold(state: PatientState, *events: Message) -> PatientState:
    for i, e in enumerate(events):
        state = domain.evolve(state, Recorded(f"e{i}-{id(e)}", NOW, "", e))
    return state


def decide_and_fold(state: PatientState, command: domain.Command) -> PatientState:
    return fold(state, *domain.decide(state, command))


def broken_glass(reason: pb.BreakGlassReason.ValueType = pb.BREAK_GLASS_REASON_LIFE_THREATENING) -> PatientState:
    command = domain.InvokeBreakGlass("bg-1", DOC, "", b"h" * 32, NOW + timedelta(hours=4), reason)
    return decide_and_fold(PatientState("pat"), command)


# ---- break-glass: reason, daily limit, review -------------------------------------


@pytest.mark.parametrize("reason", [pb.BREAK_GLASS_REASON_UNSPECIFIED, 99])
def test_break_glass_needs_a_reason_from_the_list(reason: pb.BreakGlassReason.ValueType) -> None:
    with pytest.raises(InvalidArgument, match="reason"):
        broken_glass(reason)


def test_the_daily_limit_refuses_the_next_break_glass() -> None:
    domain.require_break_glass_allowance(2, 3)
    with pytest.raises(ResourceExhausted, match="limit 3"):
        domain.require_break_glass_allowance(3, 3)


@pytest.mark.parametrize("reviewer", [AUDITOR, HOSPITAL])
def test_an_auditor_or_the_organization_reviews_once(reviewer: Actor) -> None:
    state = broken_glass()
    reviewed = decide_and_fold(state, domain.ReviewBreakGlass("bg-1", reviewer, APPROVED, b"n" * 32))
    review = reviewed.break_glass["bg-1"].review
    assert (review.status, review.reviewer_id, review.note_sha256) == (APPROVED, reviewer.identity_id, b"n" * 32)
    with pytest.raises(FailedPrecondition, match="reviewed already"):
        domain.decide(reviewed, domain.ReviewBreakGlass("bg-1", AUDITOR, INAPPROPRIATE, b"n" * 32))


@pytest.mark.parametrize("reviewer", [OTHER_HOSPITAL, Actor("doc", "PRACTITIONER"), Actor("pat", "PATIENT"), Actor("svc", "SERVICE")])
def test_no_one_else_reviews_a_break_glass(reviewer: Actor) -> None:
    with pytest.raises(PermissionDenied):
        domain.decide(broken_glass(), domain.ReviewBreakGlass("bg-1", reviewer, APPROVED, b"n" * 32))


def test_a_review_needs_an_outcome_and_a_known_break_glass() -> None:
    for outcome in (pb.REVIEW_STATUS_UNSPECIFIED, pb.REVIEW_STATUS_PENDING, pb.REVIEW_STATUS_NOT_REQUIRED):
        with pytest.raises(InvalidArgument, match="outcome"):
            domain.decide(broken_glass(), domain.ReviewBreakGlass("bg-1", AUDITOR, outcome, b"n" * 32))
    with pytest.raises(NotFound):
        domain.decide(broken_glass(), domain.ReviewBreakGlass("bg-2", AUDITOR, APPROVED, b"n" * 32))
    with pytest.raises(InvalidArgument, match="note"):
        validation.validate_note("   ")
    with pytest.raises(InvalidArgument, match="note"):
        validation.validate_note("x" * 2001)


def test_an_inappropriate_review_ends_the_emergency_access() -> None:
    view = Projection()
    for e in (registered("pat", "PATIENT"), registered("doc", "PRACTITIONER"), membership("doc", "org", "m-doc")):
        view.apply(e)
    invoked = pb.BreakGlassInvoked(
        break_glass_id="bg-1", patient_id="pat", practitioner_id="doc", organization_id="org",
        justification_sha256=b"h" * 32, valid_until=ts(NOW + timedelta(hours=4)), review_required=True,
        reason=pb.BREAK_GLASS_REASON_LIFE_THREATENING,
    )
    view.apply(event(invoked, "pat", NOW))
    query = AccessQuery("doc", "pat", pb.PURPOSE_EMERGENCY, "Observation")
    assert check_access(view, query, NOW).reason == pb.REASON_BREAK_GLASS
    assert [r.break_glass_id for r in view.pending_break_glass()] == ["bg-1"]
    reviewed = pb.BreakGlassReviewed(
        break_glass_id="bg-1", patient_id="pat", organization_id="org", outcome=INAPPROPRIATE, reviewer_id="aud",
        note_sha256=b"n" * 32,
    )
    view.apply(event(reviewed, "pat", NOW))
    assert check_access(view, query, NOW).reason == pb.REASON_BREAK_GLASS_REQUIRED
    assert list(view.pending_break_glass()) == []
    record = view.break_glass("bg-1")
    assert record is not None and record.review.status == INAPPROPRIATE


# ---- representatives ----------------------------------------------------------------


class Appointment(TypedDict, total=False):
    """RegisterRepresentative's fields for an appointment by the organization."""

    representation_id: str
    representative: IdentityFacts
    patient: IdentityFacts
    by: str
    legal_basis: pb.LegalBasis.ValueType
    evidence_sha256: bytes


def by_organization(**kw: Unpack[Appointment]) -> domain.RegisterRepresentative:
    fields = Appointment(
        representation_id="r-1", representative=MUM, patient=PATIENT, by="org",
        legal_basis=pb.LEGAL_BASIS_COURT_ORDER, evidence_sha256=b"e" * 32,
    )
    fields.update(kw)
    return domain.RegisterRepresentative(**fields)


def by_patient() -> domain.RegisterRepresentative:
    return domain.RegisterRepresentative("a-1", MUM, PATIENT, "pat", appointment=b"signed terms", signature=b"s" * 64)


def test_an_organization_appoints_with_legal_basis_and_evidence_flagged_for_review() -> None:
    (e,) = domain.decide(PatientState("pat"), by_organization())
    assert isinstance(e, pb.RepresentativeRegistered)
    assert (e.legal_basis, e.evidence_sha256, e.review_required, e.registered_by) == (
        pb.LEGAL_BASIS_COURT_ORDER, b"e" * 32, True, "org")
    state = fold(PatientState("pat"), e)
    assert state.representatives == {"mum"} and state.representations["r-1"].review.pending


@pytest.mark.parametrize("change, error, message", [
    ({"legal_basis": pb.LEGAL_BASIS_UNSPECIFIED}, InvalidArgument, "legal_basis"),
    ({"legal_basis": pb.LEGAL_BASIS_PATIENT_SIGNED}, InvalidArgument, "legal_basis"),
    ({"evidence_sha256": b""}, InvalidArgument, "evidence_sha256"),
    ({"evidence_sha256": b"e" * 31}, InvalidArgument, "evidence_sha256"),
    ({"by": "org2"}, PermissionDenied, "registered them"),
    ({"by": "pat"}, PermissionDenied, "signing"),
    ({"representative": IdentityFacts("x", "ORGANIZATION", True)}, InvalidArgument, "person"),
    ({"representative": IdentityFacts("pat", "PATIENT", True)}, InvalidArgument, "own representative"),
])
def test_appointments_that_are_refused(change: Appointment, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        domain.decide(PatientState("pat"), by_organization(**change))


def test_a_patient_appointment_carries_the_signature_and_needs_no_review() -> None:
    (e,) = domain.decide(PatientState("pat"), by_patient())
    assert isinstance(e, pb.RepresentativeRegistered)
    assert (e.legal_basis, e.appointment, e.signature, e.review_required, e.registered_by) == (
        pb.LEGAL_BASIS_PATIENT_SIGNED, b"signed terms", b"s" * 64, False, "pat")
    state = fold(PatientState("pat"), e)
    assert state.representations["a-1"].review.status == pb.REVIEW_STATUS_NOT_REQUIRED
    with pytest.raises(AlreadyExists):
        domain.decide(state, by_patient())
    assert domain.decide(state, by_organization()) == []  # already a representative: nothing to do
    with pytest.raises(FailedPrecondition, match="needs no review"):
        domain.decide(state, domain.ReviewRepresentation("a-1", AUDITOR, APPROVED, b"n" * 32))


@pytest.mark.parametrize("who, allowed", [
    (Actor("pat", "PATIENT"), True), (AUDITOR, True), (Actor("mum", "PATIENT"), True), (HOSPITAL, True),
    (OTHER_HOSPITAL, False), (Actor("doc", "PRACTITIONER"), False), (Actor("other-rep", "PATIENT"), False),
])
def test_who_ends_a_representation(who: Actor, allowed: bool) -> None:
    state = fold(
        PatientState("pat"), *domain.decide(PatientState("pat"), by_organization()),
        pb.RepresentativeRegistered(patient_id="pat", representative_id="other-rep", registered_by="pat",
                                    representation_id="r-2", legal_basis=pb.LEGAL_BASIS_PATIENT_SIGNED),
    )
    command = domain.EndRepresentation("mum", PATIENT, who)
    if not allowed:
        with pytest.raises(PermissionDenied):
            domain.decide(state, command)
        return
    (ended,) = domain.decide(state, command)
    after = fold(state, ended)
    assert after.representatives == {"other-rep"}
    record = after.representations["r-1"]
    assert not record.active and record.ended_by == who.identity_id
    with pytest.raises(NotFound):
        domain.decide(after, command)


def test_an_inappropriate_appointment_review_ends_it_and_only_auditors_review() -> None:
    state = decide_and_fold(PatientState("pat"), by_organization())
    with pytest.raises(PermissionDenied):
        domain.decide(state, domain.ReviewRepresentation("r-1", HOSPITAL, APPROVED, b"n" * 32))
    events = domain.decide(state, domain.ReviewRepresentation("r-1", AUDITOR, INAPPROPRIATE, b"n" * 32))
    assert [type(e) for e in events] == [pb.RepresentationReviewed, pb.RepresentationEnded]
    after = fold(state, *events)
    assert after.representatives == frozenset() and after.representations["r-1"].review.status == INAPPROPRIATE
    with pytest.raises(FailedPrecondition):
        domain.decide(after, domain.ReviewRepresentation("r-1", AUDITOR, APPROVED, b"n" * 32))


def test_appointments_recorded_before_ids_existed_still_fold() -> None:
    old = pb.RepresentativeRegistered(patient_id="pat", representative_id="mum", registered_by="org")
    state = domain.evolve(PatientState("pat"), Recorded("ev-1", NOW, "org", old))
    assert state.representatives == {"mum"} and state.representations["ev-1"].review.status == pb.REVIEW_STATUS_NOT_REQUIRED
    ended = domain.evolve(state, Recorded("ev-2", NOW, "pat", pb.RepresentationEnded(patient_id="pat", representative_id="mum")))
    assert ended.representatives == frozenset()


# ---- CheckAccess bounds ---------------------------------------------------------------


@pytest.mark.parametrize("patient, category, record, message", [
    ("", "Observation", "", "patient_id is required"),
    ("pat\x00", "Observation", "", "patient_id must be"),
    ("p" * 129, "Observation", "", "patient_id must be"),
    ("pat", "", "", "category or the record id"),
    ("pat", "Coding", "", "not a FHIR R4 resource type"),
    ("pat", "observation", "", "not a FHIR R4 resource type"),
    ("pat", "X" * 100_000, "", "not a FHIR R4 resource type"),
    ("pat", "", "rec 1", "record_id must be"),
    ("pat", "", "r" * 129, "record_id must be"),
])
def test_access_requests_are_bounded(patient: str, category: str, record: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validation.validate_access_request(patient, category, record, is_resource_type)


def test_the_largest_decision_event_stays_far_below_the_ledger_limit() -> None:
    """Every field of AccessDecided is bounded by the checks above (ids of 128
    characters, categories of 64, consent ids checked at grant, identity ids
    from tokens): an event of the largest accepted values, signed, is tiny."""
    validation.validate_access_request("p" * 128, "Observation", "r" * 128, is_resource_type)
    assert not validation.CATEGORY_PATTERN.match("C" * 65)
    decided = pb.AccessDecided(
        requester_id="q" * 128, patient_id="p" * 128, purpose=pb.PURPOSE_EMERGENCY, category="C" * 64,
        record_id="r" * 128, decision=pb.DECISION_DENY, reason=pb.REASON_BREAK_GLASS_REQUIRED, consent_id="c" * 128,
        break_glass_id="b" * 36, asked_by="q" * 128,
    )
    env = envelope(decided, aggregate_id="p" * 128, producer="consent", actor="q" * 128)
    sealed = PRODUCERS.seal(env)
    assert len(sealed) < 4096 < MAX_EVENT_BYTES


# ---- signatures: the window and the current key ---------------------------------


def test_only_the_current_key_signs_new_statements() -> None:
    key = Ed25519PrivateKey.generate()
    appointment = pb.RepresentativeAppointment(
        appointment_id="a-1", patient_id="pat", representative_id="mum", signer_key_id="k1", signed_at=ts(NOW),
    )
    encoded, signature = sign_appointment(key, appointment)
    message = signing.APPOINTMENT_CONTEXT + encoded
    raw = key.public_key().public_bytes_raw()
    current = SigningKey("k1", raw, NOW - timedelta(days=30), None, None)
    verify_signed(current, NOW, NOW, message, signature, "appointment")
    rotated_out = SigningKey("k1", raw, NOW - timedelta(days=30), NOW - timedelta(days=1), None)
    with pytest.raises(PermissionDenied, match="no longer the signer's current key"):
        verify_signed(rotated_out, NOW, NOW - timedelta(days=2), message, signature, "appointment")
    revoked = SigningKey("k1", raw, NOW - timedelta(days=30), None, NOW + timedelta(days=1))
    with pytest.raises(PermissionDenied, match="revoked"):
        verify_signed(revoked, NOW, NOW, message, signature, "appointment")
    with pytest.raises(PermissionDenied, match="does not verify"):
        verify_signed(current, NOW, NOW, signing.CONTEXT + encoded, signature, "consent")  # another statement's prefix
    assert signing.parse_appointment(encoded) == appointment


@pytest.mark.parametrize("signed_at, ok", [
    (NOW, True), (NOW + timedelta(minutes=4), True), (NOW - timedelta(hours=23), True),
    (NOW + timedelta(minutes=6), False), (NOW - timedelta(hours=25), False),
])
def test_the_signing_window(signed_at: datetime, ok: bool) -> None:
    appointment = pb.RepresentativeAppointment(
        appointment_id="a-1", patient_id="pat", representative_id="mum", signer_key_id="k1", signed_at=ts(signed_at),
    )
    if ok:
        validation.validate_appointment(appointment, NOW, WINDOW)
    else:
        with pytest.raises(InvalidArgument, match="signed_at"):
            validation.validate_appointment(appointment, NOW, WINDOW)


# ---- sealed texts -------------------------------------------------------------------


def test_texts_are_sealed_per_owner_and_apart_from_identity_demographics() -> None:
    key = b"k" * 32
    sealer = Sealer(key, TEXTS)
    sealed = sealer.seal("justification:bg-1", "unconscious, allergies unknown".encode())
    assert b"unconscious" not in sealed.ciphertext + sealed.wrapped_key
    assert sealer.open("justification:bg-1", sealed) == b"unconscious, allergies unknown"
    with pytest.raises(SealError):
        sealer.open("justification:bg-2", sealed)  # copied onto another row
    with pytest.raises(SealError):
        Sealer(b"x" * 32, TEXTS).open("justification:bg-1", sealed)  # another data key
    with pytest.raises(SealError):
        Sealer(key, DEMOGRAPHICS).open("justification:bg-1", sealed)  # the same key file used by identity
    assert Vault(key).kek_id != sealer.kek_id


# ---- settings -------------------------------------------------------------------------


def consent_settings(tmp_path: Path, **extra: str) -> ConsentSettings:
    env = dict(PRODUCERS.write(tmp_path / "producers"), MEDLEDGER_RUN_DIR=str(tmp_path), **extra)
    return ConsentSettings.from_env(env)


def test_break_glass_and_signature_settings_have_safe_defaults_and_bounds(tmp_path: Path) -> None:
    settings = consent_settings(tmp_path)
    assert (settings.break_glass_ttl_s, settings.break_glass_daily_limit, settings.signature_max_age_s) == (
        4 * 3600, 3, 24 * 3600)
    assert (tmp_path / "keys" / "consent-data.key").exists()  # a development data key, generated once
    assert consent_settings(tmp_path).data_key == settings.data_key
    assert consent_settings(tmp_path, MEDLEDGER_CONSENT_BREAK_GLASS_TTL_S="86400").break_glass_ttl_s == 86400
    for name, value in (("MEDLEDGER_CONSENT_BREAK_GLASS_TTL_S", "86401"), ("MEDLEDGER_CONSENT_BREAK_GLASS_DAILY_LIMIT", "0"),
                        ("MEDLEDGER_CONSENT_SIGNATURE_MAX_AGE_S", "0")):
        with pytest.raises(SettingsError, match=name):
            consent_settings(tmp_path, **{name: value})
    with pytest.raises(SettingsError, match="MEDLEDGER_CONSENT_DATA_KEY_FILE"):
        consent_settings(tmp_path, MEDLEDGER_CONSENT_DATA_KEY_FILE=str(tmp_path / "missing.key"))  # set: must exist
