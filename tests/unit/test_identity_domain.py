"""The identity domain without I/O: who may do what, key history over time,
memberships, and that evolve folds exactly what decide decided."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from medledger.identity import domain
from medledger.identity.domain import Identity, Kind
from medledger.identity.keyfiles import raw_public_key
from medledger.runtime.errors import (
    AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Unauthenticated,
)

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def pub() -> bytes:
    return raw_public_key(Ed25519PrivateKey.generate())


def register(
    identity_id: str, kind: Kind, actor: Identity | None, when: int = 0, assurance: str = "IAL2", org_type: str = ""
) -> Identity:
    command = domain.Register(identity_id, kind, pub(), assurance, org_type, actor, at(when))
    state = domain.fold(domain.decide(None, command))
    assert state is not None
    return state


@pytest.fixture
def operator() -> Identity:
    return register("op", Kind.ORGANIZATION, None, assurance="", org_type=domain.OPERATOR)


@pytest.fixture
def hospital(operator: Identity) -> Identity:
    return register("hosp", Kind.ORGANIZATION, operator, assurance="", org_type="HOSPITAL")


def apply(state: Identity, command: domain.Command) -> Identity:
    after = domain.fold(domain.decide(state, command), state)
    assert after is not None
    return after


# ---- registration ----------------------------------------------------------------


def test_bootstrap_registers_only_an_operator_organization() -> None:
    with pytest.raises(PermissionDenied):
        register("x", Kind.ORGANIZATION, None, assurance="", org_type="HOSPITAL")
    with pytest.raises(PermissionDenied):
        register("x", Kind.PATIENT, None)
    op = register("op", Kind.ORGANIZATION, None, assurance="", org_type=domain.OPERATOR)
    assert op.is_operator and op.registered_by == "" and op.active


def test_organizations_register_patients_and_practitioners(hospital: Identity) -> None:
    patient = register("p", Kind.PATIENT, hospital)
    doc = register("d", Kind.PRACTITIONER, hospital)
    assert (patient.registered_by, doc.registered_by) == ("hosp", "hosp")
    assert patient.assurance_level == "IAL2"


@pytest.mark.parametrize("kind", [Kind.ORGANIZATION, Kind.SERVICE])
def test_only_operators_register_organizations_and_services(hospital: Identity, operator: Identity, kind: Kind) -> None:
    org_type = "CLINIC" if kind is Kind.ORGANIZATION else ""
    with pytest.raises(PermissionDenied):
        register("x", kind, hospital, org_type=org_type)
    assert register("x", kind, operator, org_type=org_type).kind is kind


def test_an_auditors_scope_follows_who_registered_it(hospital: Identity, operator: Identity) -> None:
    network = register("n", Kind.AUDITOR, operator)
    organization = register("o", Kind.AUDITOR, hospital)
    assert domain.audit_scope(network, operator) == "network"
    assert domain.audit_scope(organization, hospital) == "organization"
    assert domain.audit_scope(organization, None) == "organization"  # registrar unknown: the narrower remit
    assert domain.audit_scope(register("p", Kind.PATIENT, hospital), hospital) == ""
    patient = register("q", Kind.PATIENT, hospital)
    with pytest.raises(PermissionDenied):
        register("x", Kind.AUDITOR, patient)


def test_a_patient_cannot_register_anyone(hospital: Identity) -> None:
    patient = register("p", Kind.PATIENT, hospital)
    with pytest.raises(PermissionDenied):
        register("q", Kind.PATIENT, patient)


def test_a_revoked_organization_registers_no_one(hospital: Identity) -> None:
    revoked = apply(hospital, domain.RevokeIdentity("CESSATION_OF_OPERATION", hospital, at(1)))
    with pytest.raises(PermissionDenied, match="revoked"):
        register("p", Kind.PATIENT, revoked, when=2)


@pytest.mark.parametrize("raw", [b"", b"\x01" * 31, b"\x01" * 33, bytes(32)])
def test_malformed_public_keys_are_invalid(hospital: Identity, raw: bytes) -> None:
    command = domain.Register("p", Kind.PATIENT, raw, "IAL2", "", hospital, T0)
    with pytest.raises(InvalidArgument):
        domain.decide(None, command)


def test_assurance_and_organization_type_are_checked(hospital: Identity, operator: Identity) -> None:
    with pytest.raises(InvalidArgument, match="assurance_level"):
        register("p", Kind.PATIENT, hospital, assurance="")
    with pytest.raises(InvalidArgument, match="assurance_level"):
        register("p", Kind.PATIENT, hospital, assurance="IAL9")
    with pytest.raises(InvalidArgument, match="organization_type"):
        register("o", Kind.ORGANIZATION, operator, assurance="", org_type="CASINO")
    with pytest.raises(InvalidArgument, match="organization_type"):
        register("p", Kind.PATIENT, hospital, org_type="HOSPITAL")


def test_registering_an_existing_id_already_exists(hospital: Identity) -> None:
    patient = register("p", Kind.PATIENT, hospital)
    with pytest.raises(AlreadyExists):
        domain.decide(patient, domain.Register("p", Kind.PATIENT, pub(), "IAL2", "", hospital, T0))


# ---- keys over time ----------------------------------------------------------------


def test_rotation_keeps_history_so_old_signatures_verify_as_of_their_time(hospital: Identity) -> None:
    old_key, new_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    command = domain.Register("p", Kind.PATIENT, raw_public_key(old_key), "IAL2", "", hospital, at(0))
    patient = domain.fold(domain.decide(None, command))
    assert patient is not None
    rotated = apply(patient, domain.RotateKey(raw_public_key(new_key), patient, at(10)))
    first, second = rotated.keys
    assert second.previous_key_id == first.key_id and first.replaced_at == at(10)
    assert rotated.key_at(at(5)) == first and rotated.key_at(at(10)) == second
    assert rotated.key_at(at(-1)) is None and rotated.current_key == second
    message = b"consent v1"
    assert domain.verify_signature_at(rotated, message, old_key.sign(message), at(5)) == (True, first.key_id)
    assert domain.verify_signature_at(rotated, message, old_key.sign(message), at(11)) == (False, second.key_id)
    assert domain.verify_signature_at(rotated, message, new_key.sign(message), at(11)) == (True, second.key_id)
    assert domain.verify_signature_at(rotated, message, old_key.sign(message), at(11), first.key_id)[0] is False


def test_revoked_key_signs_nothing_from_its_revocation_on(hospital: Identity) -> None:
    key = Ed25519PrivateKey.generate()
    patient = domain.fold(domain.decide(None, domain.Register("p", Kind.PATIENT, raw_public_key(key), "IAL2", "", hospital, at(0))))
    assert patient is not None
    revoked = apply(patient, domain.RevokeKey(patient.keys[0].key_id, patient, at(10)))
    sig = key.sign(b"m")
    assert domain.verify_signature_at(revoked, b"m", sig, at(5))[0] is True
    assert domain.verify_signature_at(revoked, b"m", sig, at(10))[0] is False
    assert revoked.current_key is None and revoked.keys[0].valid_until == at(10)
    with pytest.raises(FailedPrecondition, match="no usable key"):
        domain.authentication_key(revoked)
    with pytest.raises(FailedPrecondition, match="already revoked"):
        domain.decide(revoked, domain.RevokeKey(patient.keys[0].key_id, revoked, at(11)))


def test_reusing_an_own_key_is_refused(hospital: Identity) -> None:
    patient = register("p", Kind.PATIENT, hospital)
    with pytest.raises(AlreadyExists):
        domain.decide(patient, domain.RotateKey(patient.keys[0].public_key, patient, at(1)))


def test_keys_are_managed_by_the_identity_its_registrar_or_an_operator(hospital: Identity, operator: Identity) -> None:
    patient = register("p", Kind.PATIENT, hospital)
    doc = register("d", Kind.PRACTITIONER, hospital)
    auditor = register("a", Kind.AUDITOR, operator)
    other = register("other", Kind.ORGANIZATION, operator, assurance="", org_type="CLINIC")
    for target in (doc, auditor, hospital):
        with pytest.raises(PermissionDenied):
            domain.decide(target, domain.RotateKey(pub(), other, at(1)))
        with pytest.raises(PermissionDenied):
            domain.decide(target, domain.RevokeKey(target.keys[0].key_id, other, at(1)))
    assert len(apply(doc, domain.RotateKey(pub(), hospital, at(1))).keys) == 2
    assert len(apply(doc, domain.RotateKey(pub(), operator, at(1))).keys) == 2
    assert len(apply(auditor, domain.RotateKey(pub(), operator, at(1))).keys) == 2
    assert len(apply(hospital, domain.RotateKey(pub(), hospital, at(1))).keys) == 2
    assert apply(doc, domain.RevokeKey(doc.keys[0].key_id, hospital, at(1))).current_key is None


def test_a_patients_keys_are_its_own(hospital: Identity, operator: Identity) -> None:
    """A patient's key signs its consents: neither the hospital that registered
    it nor an operator may replace or revoke it."""
    patient = register("p", Kind.PATIENT, hospital)
    for actor in (hospital, operator):
        with pytest.raises(PermissionDenied):
            domain.decide(patient, domain.RotateKey(pub(), actor, at(1)))
        with pytest.raises(PermissionDenied):
            domain.decide(patient, domain.RevokeKey(patient.keys[0].key_id, actor, at(1)))
    assert len(apply(patient, domain.RotateKey(pub(), patient, at(1))).keys) == 2


def test_cross_hospital_takeover_is_refused(hospital: Identity, operator: Identity) -> None:
    """Issue 9, item 1: hospital B enrolled hospital A's practitioner and then
    rotated its key. Both steps are refused; even a membership the member did
    accept gives B no power over the member's keys."""
    doc = register("d", Kind.PRACTITIONER, hospital)
    rival = register("b", Kind.ORGANIZATION, operator, assurance="", org_type="HOSPITAL")
    with pytest.raises(PermissionDenied, match="acceptance"):
        domain.decide(doc, domain.GrantMembership("m", rival, "b", "physician", rival, at(1)))
    with pytest.raises(PermissionDenied):
        domain.decide(doc, domain.RotateKey(pub(), rival, at(1)))
    with pytest.raises(PermissionDenied):
        domain.decide(doc, domain.RevokeKey(doc.keys[0].key_id, rival, at(1)))
    # The organization that registered the practitioner, and an operator, grant directly.
    assert apply(doc, domain.GrantMembership("m", hospital, "hosp", "physician", hospital, at(1))).active_organizations
    assert apply(doc, domain.GrantMembership("m", rival, "b", "physician", operator, at(1))).active_organizations


def test_unknown_identity_is_not_found(hospital: Identity) -> None:
    with pytest.raises(NotFound):
        domain.decide(None, domain.RotateKey(pub(), hospital, T0))


# ---- identities and memberships ----------------------------------------------------


def test_revocation_rules(hospital: Identity, operator: Identity) -> None:
    patient = register("p", Kind.PATIENT, hospital)
    stranger = register("s", Kind.PATIENT, hospital)
    with pytest.raises(PermissionDenied):
        domain.decide(patient, domain.RevokeIdentity("SUBJECT_REQUEST", stranger, at(1)))
    for actor in (patient, hospital, operator):
        assert not apply(patient, domain.RevokeIdentity("SUBJECT_REQUEST", actor, at(1))).active
    revoked = apply(patient, domain.RevokeIdentity("SUPERSEDED", patient, at(1)))
    assert revoked.revocation_reason == "SUPERSEDED" and revoked.revoked_at == at(1)
    with pytest.raises(FailedPrecondition):
        domain.decide(revoked, domain.RevokeIdentity("SUPERSEDED", hospital, at(2)))
    with pytest.raises(PermissionDenied, match="revoked"):
        domain.authentication_key(revoked)


@pytest.mark.parametrize("reason", ["", "left the hospital after a diagnosis", "superseded", "REVOCATION_REASON_UNSPECIFIED"])
def test_a_revocation_reason_is_a_known_code_never_free_text(hospital: Identity, reason: str) -> None:
    patient = register("p", Kind.PATIENT, hospital)
    with pytest.raises(InvalidArgument, match="reason"):
        domain.decide(patient, domain.RevokeIdentity(reason, hospital, at(1)))


def _accept(key: Ed25519PrivateKey, member: Identity, org_id: str, role: str, when: datetime, nonce: bytes = b"n" * 16) -> domain.Acceptance:
    message = domain.acceptance_message(org_id, member.identity_id, role, when, nonce)
    return domain.Acceptance(member.keys[-1].key_id, when, nonce, key.sign(message))


def _grant(member: Identity, org: Identity, role: str, when: datetime, acceptance: domain.Acceptance | None) -> domain.GrantMembership:
    return domain.GrantMembership("m-" + str(when.timestamp()), org, org.identity_id, role, org, when, acceptance)


def test_another_organization_needs_the_members_signed_acceptance(hospital: Identity, operator: Identity) -> None:
    key = Ed25519PrivateKey.generate()
    doc = domain.fold(domain.decide(None, domain.Register("d", Kind.PRACTITIONER, raw_public_key(key), "IAL2", "", hospital, at(0))))
    assert doc is not None
    clinic = register("c", Kind.ORGANIZATION, operator, assurance="", org_type="CLINIC")
    accepted = _accept(key, doc, "c", "physician", at(1))
    member = apply(doc, _grant(doc, clinic, "physician", at(2), accepted))
    assert member.active_organizations == ("c",) and member.memberships[0].acceptance == accepted
    ended = apply(member, domain.EndMembership(member.memberships[0].membership_id, member, at(3)))
    refused = {
        "replayed after the membership ended": _grant(ended, clinic, "physician", at(4), accepted),
        "another role than accepted": _grant(doc, clinic, "director", at(2), accepted),
        "signed by another key": _grant(doc, clinic, "physician", at(2), _accept(Ed25519PrivateKey.generate(), doc, "c", "physician", at(1))),
        "older than the maximum age": _grant(doc, clinic, "physician", at(1) + timedelta(days=1, minutes=1), accepted),
        "dated in the future": _grant(doc, clinic, "physician", at(1) - timedelta(minutes=6), accepted),
    }
    for why, command in refused.items():
        target = ended if why.startswith("replayed") else doc
        with pytest.raises(PermissionDenied):
            domain.decide(target, command)
    rotated = apply(doc, domain.RotateKey(pub(), doc, at(1)))
    with pytest.raises(PermissionDenied, match="current key"):  # made with a key rotated out since
        domain.decide(rotated, _grant(rotated, clinic, "physician", at(2), accepted))
    with pytest.raises(InvalidArgument, match="nonce"):
        domain.decide(doc, _grant(doc, clinic, "physician", at(2), _accept(key, doc, "c", "physician", at(1), b"short")))
    # A fresh acceptance after the end works again.
    again = _accept(key, ended, "c", "physician", at(4), b"m" * 16)
    assert apply(ended, _grant(ended, clinic, "physician", at(5), again)).active_organizations == ("c",)


def test_the_acceptance_message_is_domain_separated_and_unambiguous() -> None:
    one = domain.acceptance_message("org", "member", "physician", T0, b"n" * 16)
    assert one.startswith(domain.ACCEPTANCE_CONTEXT + b"\x00")
    assert not one.startswith(domain.CHALLENGE_CONTEXT)
    assert one != domain.acceptance_message("org", "member", "physicia", T0, b"nn" * 8)
    assert one != domain.acceptance_message("org", "member", "physician", T0 + timedelta(seconds=1), b"n" * 16)
    with pytest.raises(InvalidArgument, match="NUL"):
        domain.acceptance_message("org\x00member", "x", "physician", T0, b"n" * 16)


def test_memberships_are_granted_and_ended_by_the_organization(hospital: Identity, operator: Identity) -> None:
    doc = register("d", Kind.PRACTITIONER, hospital)
    other = register("o", Kind.ORGANIZATION, operator, assurance="", org_type="CLINIC")
    with pytest.raises(PermissionDenied):
        domain.decide(doc, domain.GrantMembership("m", hospital, "hosp", "physician", other, at(1)))
    with pytest.raises(InvalidArgument, match="role"):
        domain.decide(doc, domain.GrantMembership("m", hospital, "hosp", "Chief Doctor!", hospital, at(1)))
    with pytest.raises(NotFound):
        domain.decide(doc, domain.GrantMembership("m", None, "nope", "physician", operator, at(1)))
    member = apply(doc, domain.GrantMembership("m", hospital, "hosp", "physician", hospital, at(1)))
    assert member.active_organizations == ("hosp",)
    with pytest.raises(AlreadyExists):
        domain.decide(member, domain.GrantMembership("m2", hospital, "hosp", "nurse", hospital, at(2)))
    with pytest.raises(PermissionDenied):
        domain.decide(member, domain.EndMembership("m", other, at(2)))
    ended = apply(member, domain.EndMembership("m", member, at(3)))
    assert ended.active_organizations == () and not ended.memberships[0].active
    with pytest.raises(FailedPrecondition):
        domain.decide(ended, domain.EndMembership("m", hospital, at(4)))


def test_patients_cannot_be_members(hospital: Identity) -> None:
    patient = register("p", Kind.PATIENT, hospital)
    with pytest.raises(InvalidArgument):
        domain.decide(patient, domain.GrantMembership("m", hospital, "hosp", "patient", hospital, at(1)))


def test_membership_events_belong_to_the_member() -> None:
    event = domain.MembershipGranted("m", "member", "org", "physician", T0)
    assert domain.aggregate_of(event) == "member"


def test_demographics_visibility(hospital: Identity, operator: Identity) -> None:
    patient = register("p", Kind.PATIENT, hospital)
    other = register("o", Kind.ORGANIZATION, operator, assurance="", org_type="CLINIC")
    assert domain.may_see_demographics(patient, patient)
    assert domain.may_see_demographics(hospital, patient)
    assert domain.may_see_demographics(operator, patient)
    assert not domain.may_see_demographics(other, patient)
    assert not domain.may_see_demographics(None, patient)


def test_evolve_rejects_events_that_cannot_follow(hospital: Identity) -> None:
    patient = register("p", Kind.PATIENT, hospital)
    with pytest.raises(domain.InconsistentEvent):
        domain.evolve(None, domain.KeyRevoked("p", "k", T0))
    with pytest.raises(domain.InconsistentEvent):
        domain.evolve(patient, domain.KeyRevoked("p", "no-such-key", T0))
    with pytest.raises(domain.InconsistentEvent):
        domain.evolve(patient, domain.IdentityRegistered("p", Kind.PATIENT, "k", pub(), "IAL2", "", "", T0))


def test_challenge_message_binds_identity_and_nonce() -> None:
    assert domain.challenge_message("a", b"n") != domain.challenge_message("b", b"n")
    assert domain.challenge_message("a", b"n").startswith(domain.CHALLENGE_CONTEXT)


def test_a_challenge_names_the_current_key_and_expires_after_its_ttl(hospital: Identity) -> None:
    patient = register("p", Kind.PATIENT, hospital)
    key_id = patient.keys[-1].key_id
    assert domain.issue_challenge(patient, "", T0, 60) == domain.PendingChallenge("p", key_id, T0 + timedelta(seconds=60))
    with pytest.raises(FailedPrecondition):
        domain.issue_challenge(patient, "another-key", T0, 60)
    revoked = apply(patient, domain.RevokeIdentity("SUBJECT_REQUEST", hospital, at(1)))
    with pytest.raises(PermissionDenied):
        domain.issue_challenge(revoked, "", at(2), 60)


def test_a_challenge_is_redeemed_only_by_its_identity_for_its_key_before_it_expires() -> None:
    pending = domain.PendingChallenge("p", "k1", at(1))
    assert domain.redeem_challenge(pending, "p", "", T0) == "k1"
    assert domain.redeem_challenge(pending, "p", "k1", T0) == "k1"
    for spent, identity_id, key_id, now in [
        (None, "p", "", T0),  # unknown or already used
        (pending, "q", "", T0),  # another identity's nonce
        (pending, "p", "", at(1)),  # expired
        (pending, "p", "k2", T0),  # issued for another key
    ]:
        with pytest.raises(Unauthenticated):
            domain.redeem_challenge(spent, identity_id, key_id, now)


def test_demographics_fields_are_bounded_and_birth_dates_real() -> None:
    domain.check_demographics({"given_name": "A" * domain.MAX_DEMOGRAPHIC_FIELD, "birth_date": "1980-02-29"})
    domain.check_demographics({})
    for fields in [
        {"email": "x" * (domain.MAX_DEMOGRAPHIC_FIELD + 1)},
        {"birth_date": "1981-02-29"},
        {"birth_date": "19800229"},
        {"birth_date": "tomorrow"},
    ]:
        with pytest.raises(InvalidArgument):
            domain.check_demographics(fields)


def test_only_an_active_organization_looks_up_medical_record_numbers(hospital: Identity) -> None:
    assert domain.check_mrn_lookup(hospital) is hospital
    closed = apply(hospital, domain.RevokeIdentity("CESSATION_OF_OPERATION", hospital, at(1)))
    with pytest.raises(PermissionDenied, match="revoked"):
        domain.check_mrn_lookup(closed)
    with pytest.raises(PermissionDenied):
        domain.check_mrn_lookup(register("p", Kind.PATIENT, hospital))
    with pytest.raises(Unauthenticated):
        domain.check_mrn_lookup(None)


def test_medical_record_numbers_are_for_patients_registered_by_organizations(hospital: Identity) -> None:
    domain.check_mrn(Kind.PATIENT, hospital, "MRN-1")
    for kind, registrar, mrn in [
        (Kind.PRACTITIONER, hospital, "MRN-1"),
        (Kind.PATIENT, None, "MRN-1"),
        (Kind.PATIENT, hospital, "   "),
        (Kind.PATIENT, hospital, "9" * (domain.MAX_MRN + 1)),
    ]:
        with pytest.raises(InvalidArgument):
            domain.check_mrn(kind, registrar, mrn)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=10), min_size=1, max_size=8))
def test_key_history_covers_time_without_gaps(steps: list[int]) -> None:
    """Property: after any sequence of rotations exactly one key is in effect
    at every instant from registration on, and it is the latest one started."""
    op = register("op", Kind.ORGANIZATION, None, assurance="", org_type=domain.OPERATOR)
    state = register("p", Kind.PATIENT, op)
    when = 0
    for step in steps:
        when += step
        state = apply(state, domain.RotateKey(pub(), state, at(when)))
    for minute in range(0, when + 2):
        in_effect = [k for k in state.keys if k.in_effect(at(minute))]
        assert len(in_effect) == 1 and in_effect[0] == state.key_at(at(minute))
    assert state.current_key == state.keys[-1]
