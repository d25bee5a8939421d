"""Access decisions over a projection fed with consent and identity events:
grant/revoke/expiry, purposes, scope, organization grants and memberships,
break-glass, and which reason a DENY gives."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from medledger.consent.decisions import AccessQuery, check_access, who_can_access
from medledger.consent.projection import Projection
from medledger.v1 import consent_pb2 as pb
from medledger.v1 import events_pb2
from medledger.testing.consent import event, granted, membership, registered, revoked, terms, ts

NOW = datetime.now(timezone.utc)


@pytest.fixture(autouse=True)
def _fresh_now() -> None:
    """NOW is each test's own moment: terms() defaults are relative to the real
    clock, and a long suite runs these tests minutes after import."""
    global NOW
    NOW = datetime.now(timezone.utc)
TREAT, PAY, RESEARCH, EMERGENCY = pb.PURPOSE_TREATMENT, pb.PURPOSE_PAYMENT, pb.PURPOSE_RESEARCH, pb.PURPOSE_EMERGENCY


@pytest.fixture
def view() -> Projection:
    p = Projection()
    for e in (
        registered("pat", "PATIENT"), registered("org", "ORGANIZATION"), registered("doc", "PRACTITIONER"),
        registered("nurse", "PRACTITIONER"), registered("aud", "AUDITOR"), membership("doc", "org", "m-doc"),
        membership("aud", "org", "m-aud"),
    ):
        p.apply(e)
    return p


def apply(view: Projection, *events: events_pb2.EventEnvelope) -> None:
    for e in events:
        assert view.apply(e)


def ask(view: Projection, requester: str = "doc", purpose: pb.Purpose.ValueType = TREAT, category: str = "Observation",
        record_id: str = "", at: datetime | None = None) -> tuple[int, int, str]:
    v = check_access(view, AccessQuery(requester, "pat", purpose, category, record_id), at or NOW)
    return v.decision, v.reason, v.consent_id


ALLOW, DENY = pb.DECISION_ALLOW, pb.DECISION_DENY


def test_grant_allows_then_revoke_denies(view: Projection) -> None:
    t = terms("pat", "doc")
    assert ask(view) == (DENY, pb.REASON_NO_CONSENT, "")
    apply(view, granted(t))
    assert ask(view) == (ALLOW, pb.REASON_CONSENT, t.consent_id)
    apply(view, revoked(t))
    assert ask(view) == (DENY, pb.REASON_CONSENT_REVOKED, t.consent_id)


def test_expiry_needs_no_event(view: Projection) -> None:
    t = terms("pat", "doc", valid_from=NOW - timedelta(hours=1), valid_until=NOW + timedelta(minutes=1))
    apply(view, granted(t))
    assert ask(view)[0] == ALLOW
    assert ask(view, at=NOW + timedelta(minutes=1)) == (DENY, pb.REASON_CONSENT_EXPIRED, t.consent_id)
    assert ask(view, at=NOW - timedelta(hours=2)) == (DENY, pb.REASON_CONSENT_NOT_YET_VALID, t.consent_id)


@pytest.mark.parametrize("purpose", [TREAT, PAY, pb.PURPOSE_OPERATIONS, RESEARCH])
def test_each_purpose_is_granted_only_by_name(view: Projection, purpose: pb.Purpose.ValueType) -> None:
    apply(view, granted(terms("pat", "doc", purposes=[purpose])))
    for asked in (TREAT, PAY, pb.PURPOSE_OPERATIONS, RESEARCH):
        expected = (ALLOW, pb.REASON_CONSENT) if asked == purpose else (DENY, pb.REASON_PURPOSE_NOT_COVERED)
        assert ask(view, purpose=asked)[:2] == expected


def test_scope_by_category_record_or_all(view: Projection) -> None:
    apply(view, granted(terms("pat", "doc", categories=["Observation", "Condition"], record_ids=["rec-9"])))
    assert ask(view, category="Condition")[0] == ALLOW
    assert ask(view, category="MedicationRequest")[:2] == (DENY, pb.REASON_OUT_OF_SCOPE)
    assert ask(view, category="", record_id="rec-9")[0] == ALLOW
    assert ask(view, category="MedicationRequest", record_id="rec-9")[0] == ALLOW
    assert ask(view, category="", record_id="rec-1")[:2] == (DENY, pb.REASON_OUT_OF_SCOPE)
    apply(view, granted(terms("pat", "doc")))
    assert ask(view, category="MedicationRequest")[0] == ALLOW


def test_deny_names_the_most_nearly_matching_consent(view: Projection) -> None:
    old = terms("pat", "doc")
    research = terms("pat", "doc", purposes=[RESEARCH])
    apply(view, granted(old), revoked(old), granted(research))
    assert ask(view) == (DENY, pb.REASON_PURPOSE_NOT_COVERED, research.consent_id)


def test_organization_grant_covers_members_while_their_membership_is_active(view: Projection) -> None:
    t = terms("pat", "org")
    apply(view, granted(t, grantee_kind=pb.GRANTEE_KIND_ORGANIZATION))
    assert ask(view, "doc") == (ALLOW, pb.REASON_ORGANIZATION_CONSENT, t.consent_id)
    assert ask(view, "nurse")[:2] == (DENY, pb.REASON_NO_CONSENT)
    assert ask(view, "aud")[:2] == (DENY, pb.REASON_NO_CONSENT)  # organizations cover practitioners only
    apply(view, membership("doc", "org", "m-doc", ended=True))
    assert ask(view, "doc")[:2] == (DENY, pb.REASON_MEMBERSHIP_INACTIVE)
    apply(view, membership("doc", "org", "m-doc-2"))
    assert ask(view, "doc")[0] == ALLOW


def test_membership_read_before_the_members_registration(view: Projection) -> None:
    apply(view, membership("late", "org", "m-late"), registered("late", "PRACTITIONER"))
    apply(view, granted(terms("pat", "org"), grantee_kind=pb.GRANTEE_KIND_ORGANIZATION))
    assert ask(view, "late")[0] == ALLOW


def test_revoked_or_unknown_requesters_are_denied(view: Projection) -> None:
    from medledger.v1 import identity_pb2 as ipb

    apply(view, granted(terms("pat", "doc")))
    assert ask(view, "ghost")[:2] == (DENY, pb.REASON_REQUESTER_NOT_ACTIVE)
    apply(view, event(ipb.IdentityRevoked(identity_id="doc", reason=ipb.AFFILIATION_CHANGED), "doc"))
    assert ask(view, "doc")[:2] == (DENY, pb.REASON_REQUESTER_NOT_ACTIVE)


def break_glass(by: str = "doc", org: str = "org", until: datetime | None = None) -> events_pb2.EventEnvelope:
    payload = pb.BreakGlassInvoked(
        break_glass_id=f"bg-{by}", patient_id="pat", practitioner_id=by, organization_id=org,
        justification_sha256=b"h" * 32, valid_until=ts(until or NOW + timedelta(hours=1)), review_required=True,
    )
    return event(payload, "pat")


def test_emergency_is_covered_by_a_treatment_consent(view: Projection) -> None:
    t = terms("pat", "doc", purposes=[TREAT])
    apply(view, granted(t))
    assert ask(view, purpose=EMERGENCY) == (ALLOW, pb.REASON_CONSENT, t.consent_id)


def test_emergency_without_consent_needs_break_glass(view: Projection) -> None:
    apply(view, granted(terms("pat", "doc", purposes=[PAY])))
    assert ask(view, purpose=EMERGENCY)[:2] == (DENY, pb.REASON_BREAK_GLASS_REQUIRED)
    assert ask(view, purpose=TREAT)[:2] == (DENY, pb.REASON_PURPOSE_NOT_COVERED)
    apply(view, break_glass())
    decision = check_access(view, AccessQuery("doc", "pat", EMERGENCY, "Observation"), NOW)
    assert (decision.decision, decision.reason, decision.break_glass_id) == (ALLOW, pb.REASON_BREAK_GLASS, "bg-doc")
    assert ask(view, purpose=TREAT)[0] == DENY  # break-glass is for EMERGENCY only
    assert ask(view, "nurse", purpose=EMERGENCY)[0] == DENY  # someone else's break-glass
    assert ask(view, purpose=EMERGENCY, at=NOW + timedelta(hours=2))[:2] == (DENY, pb.REASON_BREAK_GLASS_REQUIRED)


def test_break_glass_ends_with_the_membership(view: Projection) -> None:
    apply(view, break_glass())
    assert ask(view, purpose=EMERGENCY)[0] == ALLOW
    apply(view, membership("doc", "org", "m-doc", ended=True))
    assert ask(view, purpose=EMERGENCY)[0] == DENY


def test_who_can_access_lists_effective_grantees_by_purpose(view: Projection) -> None:
    to_doc = terms("pat", "doc", purposes=[TREAT, PAY])
    to_org = terms("pat", "org", purposes=[RESEARCH])
    gone = terms("pat", "nurse")
    apply(view, granted(to_doc), granted(to_org, grantee_kind=pb.GRANTEE_KIND_ORGANIZATION), granted(gone), revoked(gone))
    found = who_can_access(view, "pat", NOW)
    assert sorted(found) == [TREAT, PAY, RESEARCH]
    assert [g.consent.consent_id for g in found[TREAT]] == [to_doc.consent_id]
    assert [(g.consent.grantee_id, g.members) for g in found[RESEARCH]] == [("org", ("doc",))]


def test_ledger_index_and_expiry_queue(view: Projection) -> None:
    t = terms("pat", "doc", valid_from=NOW - timedelta(hours=1), valid_until=NOW + timedelta(seconds=1))
    envelope = granted(t)
    apply(view, envelope)
    assert view.ledger_index(envelope.event_id) is None
    view.apply_ledger_entry(envelope.event_id, 42)
    assert view.ledger_index(envelope.event_id) == 42
    assert view.due_expiries(NOW) == []
    (due,) = view.due_expiries(NOW + timedelta(seconds=2))
    assert due.consent_id == t.consent_id and view.due_expiries(NOW + timedelta(seconds=2)) == []
    view.expiry_failed(due)
    assert [c.consent_id for c in view.due_expiries(NOW + timedelta(seconds=2))] == [t.consent_id]
