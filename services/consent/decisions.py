"""Access decisions: ALLOW or DENY for (requester, patient, purpose, category or
record), and who can access a patient's records now. Pure functions over a
read-only view of the projection; the clock is an argument.

Rules (issue 5, docs/architecture.md, Security model):
- A consent covers a request when it names the requester — or an organization
  where the requester, a practitioner, has an active membership — is neither
  revoked nor outside its window, lists the purpose and its scope covers the
  category or record.
- Purpose EMERGENCY (HL7 ETREAT, a kind of TREAT) is covered by a consent for
  TREATMENT; otherwise only by a break-glass the requester invoked that is
  still in effect (not expired, not reviewed INAPPROPRIATE), under an
  organization where its membership is still active.
- Expiry needs no event: the window is compared with the clock.
- A DENY names the most nearly matching consent and why it did not cover the
  request, so a patient or integrator can see what to change.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Protocol, cast

from medledger.consent.domain import BreakGlassRecord, ConsentRecord, IdentityFacts, PatientState
from medledger.v1 import consent_pb2 as pb


class AccessView(Protocol):
    """What decisions read: the projection of consent.events and identity.events."""

    def patient(self, patient_id: str) -> PatientState | None: ...

    def identity(self, identity_id: str) -> IdentityFacts | None: ...

    def members(self, organization_id: str) -> Iterable[str]: ...


@dataclass(frozen=True, slots=True)
class AccessQuery:
    requester_id: str
    patient_id: str
    purpose: pb.Purpose.ValueType
    category: str = ""
    record_id: str = ""


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: pb.DecisionReason.ValueType
    consent_id: str = ""
    break_glass_id: str = ""
    detail: str = ""

    @property
    def decision(self) -> pb.Decision.ValueType:
        return pb.DECISION_ALLOW if self.allowed else pb.DECISION_DENY


# Why a consent did not cover a request, from least to most nearly matching.
_MISS_ORDER = (
    pb.REASON_CONSENT_REVOKED,
    pb.REASON_CONSENT_EXPIRED,
    pb.REASON_CONSENT_NOT_YET_VALID,
    pb.REASON_PURPOSE_NOT_COVERED,
    pb.REASON_OUT_OF_SCOPE,
)
_COVERED = cast("pb.DecisionReason.ValueType", -1)  # not a reason: the consent covers the query
_STATUS_MISS = {
    pb.CONSENT_STATUS_REVOKED: pb.REASON_CONSENT_REVOKED,
    pb.CONSENT_STATUS_EXPIRED: pb.REASON_CONSENT_EXPIRED,
    pb.CONSENT_STATUS_PENDING: pb.REASON_CONSENT_NOT_YET_VALID,
}


def _consent_purpose(purpose: pb.Purpose.ValueType) -> pb.Purpose.ValueType:
    return pb.PURPOSE_TREATMENT if purpose == pb.PURPOSE_EMERGENCY else purpose


def miss(consent: ConsentRecord, query: AccessQuery, now: datetime) -> pb.DecisionReason.ValueType:
    """_COVERED, or the reason the consent does not cover the query."""
    status = consent.status(now)
    if status != pb.CONSENT_STATUS_ACTIVE:
        return _STATUS_MISS[status]
    if _consent_purpose(query.purpose) not in consent.purposes:
        return pb.REASON_PURPOSE_NOT_COVERED
    if not consent.scope.covers(query.category, query.record_id):
        return pb.REASON_OUT_OF_SCOPE
    return _COVERED


def _candidates(state: PatientState, requester: IdentityFacts) -> list[tuple[ConsentRecord, bool]]:
    """(consent, via an organization) for every consent naming the requester or
    one of its organizations (organizations cover practitioners only)."""
    found = [(c, False) for c in state.consents_for(requester.identity_id)]
    if requester.kind == "PRACTITIONER":
        for organization in sorted(requester.organizations):
            found += [(c, True) for c in state.consents_for(organization)]
    return found


def _break_glass(state: PatientState, requester: IdentityFacts, now: datetime) -> BreakGlassRecord | None:
    for record in state.break_glass.values():
        if (
            record.practitioner_id == requester.identity_id
            and record.in_effect(now)
            and record.organization_id in requester.organizations
        ):
            return record
    return None


def check_access(view: AccessView, query: AccessQuery, now: datetime) -> Verdict:
    """The decision for one request, as of now."""
    requester = view.identity(query.requester_id)
    if requester is None or not requester.active:
        return Verdict(False, pb.REASON_REQUESTER_NOT_ACTIVE, detail=f"requester {query.requester_id} is not an active identity")
    state = view.patient(query.patient_id) or PatientState(query.patient_id)
    best: tuple[pb.DecisionReason.ValueType, ConsentRecord] | None = None
    for consent, via_organization in _candidates(state, requester):
        reason = miss(consent, query, now)
        if reason == _COVERED:
            why = pb.REASON_ORGANIZATION_CONSENT if via_organization else pb.REASON_CONSENT
            return Verdict(True, why, consent_id=consent.consent_id)
        if best is None or _MISS_ORDER.index(reason) > _MISS_ORDER.index(best[0]):
            best = (reason, consent)
    if query.purpose == pb.PURPOSE_EMERGENCY:
        record = _break_glass(state, requester, now)
        if record is not None:
            return Verdict(True, pb.REASON_BREAK_GLASS, break_glass_id=record.break_glass_id)
        return Verdict(
            False, pb.REASON_BREAK_GLASS_REQUIRED, consent_id=best[1].consent_id if best else "",
            detail="no consent for TREATMENT and no break-glass in effect: InvokeBreakGlass first",
        )
    if best is not None:
        reason, consent = best
        return Verdict(False, reason, consent_id=consent.consent_id, detail=f"consent {consent.consent_id}: {pb.DecisionReason.Name(reason)}")
    if requester.kind == "PRACTITIONER" and any(state.consents_for(o) for o in requester.former_organizations - requester.organizations):
        return Verdict(False, pb.REASON_MEMBERSHIP_INACTIVE, detail="consents exist only for organizations the requester has left")
    return Verdict(False, pb.REASON_NO_CONSENT, detail=f"no consent of patient {query.patient_id} names the requester or its organizations")


@dataclass(frozen=True, slots=True)
class Grantee:
    """Someone who can access the records now, for the consent's purposes."""

    consent: ConsentRecord
    members: tuple[str, ...]


def who_can_access(view: AccessView, patient_id: str, now: datetime) -> dict[pb.Purpose.ValueType, list[Grantee]]:
    """purpose -> the grantees of consents in effect now (organizations with the
    practitioners they cover now). EMERGENCY is not listed: a TREATMENT
    consent covers it, and otherwise only a break-glass does."""
    state = view.patient(patient_id) or PatientState(patient_id)
    by_purpose: dict[pb.Purpose.ValueType, list[Grantee]] = {}
    for consent in state.consents.values():
        if consent.status(now) != pb.CONSENT_STATUS_ACTIVE:
            continue
        members: tuple[str, ...] = ()
        if consent.grantee_kind == pb.GRANTEE_KIND_ORGANIZATION:
            members = tuple(sorted(
                m for m in view.members(consent.grantee_id)
                if (facts := view.identity(m)) is not None and facts.active and facts.kind == "PRACTITIONER"
            ))
        for purpose in sorted(consent.purposes):
            by_purpose.setdefault(purpose, []).append(Grantee(consent, members))
    return by_purpose


def active_break_glass(state: PatientState, now: datetime) -> list[BreakGlassRecord]:
    return [r for r in state.break_glass.values() if r.in_effect(now)]
