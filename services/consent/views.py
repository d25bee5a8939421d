"""Domain state to consent.proto messages, for the API's answers."""

from __future__ import annotations

from datetime import datetime

from medledger.consent.decisions import Grantee, Verdict
from medledger.consent.domain import BreakGlassRecord, ConsentRecord, RepresentationRecord, Review, timestamp
from medledger.v1 import consent_pb2 as pb


def consent_message(consent: ConsentRecord, now: datetime, ledger_index: int | None) -> pb.Consent:
    msg = pb.Consent(
        terms=consent.terms(), signature=consent.signature, grantee_kind=consent.grantee_kind,
        signer_role=consent.signer_role, status=consent.status(now), granted_at=timestamp(consent.granted_at),
        revoked_by=consent.revoked_by, granted_event_id=consent.granted_event_id,
    )
    if consent.revoked_at is not None:
        msg.revoked_at.CopyFrom(timestamp(consent.revoked_at))
    if ledger_index is not None:
        msg.ledger_index = ledger_index
    return msg


def _set_review(msg: pb.BreakGlass | pb.Representation, review: Review, note: str) -> None:
    msg.review_status = review.status
    msg.reviewed_by = review.reviewer_id
    msg.review_note = note
    if review.reviewed_at is not None:
        msg.reviewed_at.CopyFrom(timestamp(review.reviewed_at))


def break_glass_message(record: BreakGlassRecord, justification: str, note: str = "") -> pb.BreakGlass:
    msg = pb.BreakGlass(
        break_glass_id=record.break_glass_id, patient_id=record.patient_id, practitioner_id=record.practitioner_id,
        organization_id=record.organization_id, justification=justification,
        justification_sha256=record.justification_sha256, invoked_at=timestamp(record.invoked_at),
        valid_until=timestamp(record.valid_until), review_required=True, reason=record.reason,
    )
    _set_review(msg, record.review, note)
    return msg


def representation_message(record: RepresentationRecord, note: str = "") -> pb.Representation:
    msg = pb.Representation(
        patient_id=record.patient_id, representative_id=record.representative_id, active=record.active,
        representation_id=record.representation_id, appointed_by=record.appointed_by,
        legal_basis=record.legal_basis, evidence_sha256=record.evidence_sha256,
        appointed_at=timestamp(record.appointed_at), ended_by=record.ended_by,
    )
    if record.ended_at is not None:
        msg.ended_at.CopyFrom(timestamp(record.ended_at))
    _set_review(msg, record.review, note)
    return msg


def grantees_message(by_purpose: dict[pb.Purpose.ValueType, list[Grantee]]) -> list[pb.PurposeGrantees]:
    return [
        pb.PurposeGrantees(purpose=purpose, grantees=[
            pb.EffectiveGrantee(
                grantee_id=g.consent.grantee_id, grantee_kind=g.consent.grantee_kind, consent_id=g.consent.consent_id,
                scope=g.consent.scope.to_proto(), valid_until=timestamp(g.consent.valid_until), members=g.members,
            )
            for g in grantees
        ])
        for purpose, grantees in sorted(by_purpose.items())
    ]


def decision_message(verdict: Verdict, event_id: str, now: datetime, ledger_index: int | None) -> pb.AccessDecision:
    msg = pb.AccessDecision(
        decision=verdict.decision, reason=verdict.reason, consent_id=verdict.consent_id,
        break_glass_id=verdict.break_glass_id, decision_event_id=event_id, decided_at=timestamp(now),
        detail=verdict.detail,
    )
    if ledger_index is not None:
        msg.consent_ledger_index = ledger_index
    return msg
