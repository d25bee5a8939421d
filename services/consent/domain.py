"""The consent domain: what a consent is, how grants, revocations, expiry,
break-glass and representatives change a patient's state, and which commands
are allowed. Pure: no asyncpg, aiokafka or grpc; the adapters (commands.py,
stream.py, store.py, api.py) bring the facts and carry the events.

Events are the protobuf contract messages of consent.proto themselves — one
definition, no mapping layer that could drift from what goes on Kafka.
``decide(state, command)`` returns them; ``evolve(state, recorded)`` folds one
into the state of one patient. The patient is the aggregate: every event about
a patient's consents carries the patient id as its Kafka key, so they are
totally ordered on one partition.

Checks on the signed terms and a break-glass justification that need no
state are in validation.py.

``evolve`` is idempotent by content (a second grant of the same consent id, a
second revocation, an expiry of a revoked consent change nothing), so a
replica may apply its own events before it reads them back from Kafka.

Access decisions (check_access) live in decisions.py, also pure.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import Hashable, Mapping, TypeVar

from google.protobuf.message import Message

from medledger.runtime.errors import (
    AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted,
)
from medledger.v1 import consent_pb2 as pb
from medledger.runtime.times import timestamp, utc  # noqa: F401 - part of this core's vocabulary

# HL7 v3 ActReason (PurposeOfUse) codes, the system FHIR uses for them.
PURPOSE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
PURPOSE_CODES: Mapping[int, str] = MappingProxyType({
    pb.PURPOSE_TREATMENT: "TREAT",
    pb.PURPOSE_PAYMENT: "HPAYMT",
    pb.PURPOSE_OPERATIONS: "HOPERAT",
    pb.PURPOSE_RESEARCH: "HRESCH",
    pb.PURPOSE_EMERGENCY: "ETREAT",
})
PURPOSE_NAMES: Mapping[int, str] = MappingProxyType({
    pb.PURPOSE_TREATMENT: "treatment",
    pb.PURPOSE_PAYMENT: "healthcare payment",
    pb.PURPOSE_OPERATIONS: "healthcare operations",
    pb.PURPOSE_RESEARCH: "healthcare research",
    pb.PURPOSE_EMERGENCY: "emergency treatment",
})
# A consent grants these; EMERGENCY is covered by TREATMENT or by break-glass.
GRANTABLE_PURPOSES = frozenset({pb.PURPOSE_TREATMENT, pb.PURPOSE_PAYMENT, pb.PURPOSE_OPERATIONS, pb.PURPOSE_RESEARCH})

GRANTEE_KINDS: Mapping[str, pb.GranteeKind.ValueType] = MappingProxyType({
    "PRACTITIONER": pb.GRANTEE_KIND_PRACTITIONER,
    "ORGANIZATION": pb.GRANTEE_KIND_ORGANIZATION,
})
# A legal representative is a person: registered as a patient or a practitioner.
REPRESENTATIVE_KINDS = frozenset({"PATIENT", "PRACTITIONER"})
# The fixed list a break-glass reason comes from.
BREAK_GLASS_REASONS = frozenset(pb.BreakGlassReason.values()) - {pb.BREAK_GLASS_REASON_UNSPECIFIED}
# What an organization may state as the legal basis of an appointment.
ORGANIZATION_LEGAL_BASES = frozenset({
    pb.LEGAL_BASIS_PARENTAL_RESPONSIBILITY, pb.LEGAL_BASIS_COURT_ORDER, pb.LEGAL_BASIS_POWER_OF_ATTORNEY,
    pb.LEGAL_BASIS_STATUTORY_SURROGATE,
})
# What a review may conclude.
REVIEW_OUTCOMES = frozenset({pb.REVIEW_STATUS_APPROVED, pb.REVIEW_STATUS_INAPPROPRIATE})
SHA256_BYTES = 32



# ---- facts the adapters bring ----------------------------------------------


@dataclass(frozen=True, slots=True)
class IdentityFacts:
    """What the consent rules need to know about an identity (from the identity
    service or from the projection of identity.events)."""

    identity_id: str
    kind: str
    active: bool
    organizations: frozenset[str] = frozenset()
    former_organizations: frozenset[str] = frozenset()
    registered_by: str = ""


# ---- state -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scope:
    all_records: bool
    categories: frozenset[str] = frozenset()
    record_ids: frozenset[str] = frozenset()

    @classmethod
    def from_proto(cls, scope: pb.ConsentScope) -> "Scope":
        if scope.all_records:
            return ALL_RECORDS
        if not scope.record_ids:  # category scopes repeat across consents: share one object each
            return _shared(cls(False, frozenset(scope.categories)))
        return cls(False, frozenset(scope.categories), frozenset(scope.record_ids))

    def covers(self, category: str, record_id: str) -> bool:
        """A request for a category, a record, or a record of a category."""
        return (
            self.all_records
            or (bool(category) and category in self.categories)
            or (bool(record_id) and record_id in self.record_ids)
        )

    def to_proto(self) -> pb.ConsentScope:
        return pb.ConsentScope(
            all_records=self.all_records, categories=sorted(self.categories), record_ids=sorted(self.record_ids)
        )


ALL_RECORDS = Scope(True)

# Values many consents hold alike (purpose sets, category scopes), one object
# each: a replica holds every consent, so per-consent copies add up.
_SHARED: dict[object, object] = {}
S = TypeVar("S", bound=Hashable)


def _shared(value: S) -> S:
    return _SHARED.setdefault(value, value)  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    """One consent. The signed terms are kept in their canonical encoding (the
    bytes the signature covers); the fields decisions need are unpacked."""

    consent_id: str
    patient_id: str
    grantee_id: str
    grantee_kind: pb.GranteeKind.ValueType
    purposes: frozenset[pb.Purpose.ValueType]
    scope: Scope
    valid_from: datetime
    valid_until: datetime
    encoded_terms: bytes
    signature: bytes
    signer_role: pb.SignerRole.ValueType
    granted_at: datetime
    granted_event_id: str
    revoked_at: datetime | None = None
    revoked_by: str = ""
    expiry_recorded: bool = False

    def status(self, now: datetime) -> pb.ConsentStatus.ValueType:
        if self.revoked_at is not None:
            return pb.CONSENT_STATUS_REVOKED
        if now >= self.valid_until:
            return pb.CONSENT_STATUS_EXPIRED
        if now < self.valid_from:
            return pb.CONSENT_STATUS_PENDING
        return pb.CONSENT_STATUS_ACTIVE

    def terms(self) -> pb.ConsentTerms:
        return pb.ConsentTerms.FromString(self.encoded_terms)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asks for a command: an identity id and its kind (from the token)."""

    identity_id: str
    kind: str


@dataclass(frozen=True, slots=True)
class Review:
    """Where the review of a break-glass or an appointment stands."""

    status: pb.ReviewStatus.ValueType
    reviewer_id: str = ""
    reviewed_at: datetime | None = None
    note_sha256: bytes = b""

    @property
    def pending(self) -> bool:
        return self.status == pb.REVIEW_STATUS_PENDING


PENDING_REVIEW = Review(pb.REVIEW_STATUS_PENDING)
NO_REVIEW = Review(pb.REVIEW_STATUS_NOT_REQUIRED)


@dataclass(frozen=True, slots=True)
class BreakGlassRecord:
    break_glass_id: str
    patient_id: str
    practitioner_id: str
    organization_id: str
    justification_sha256: bytes
    invoked_at: datetime
    valid_until: datetime
    event_id: str
    reason: pb.BreakGlassReason.ValueType = pb.BREAK_GLASS_REASON_UNSPECIFIED
    review: Review = PENDING_REVIEW

    def in_effect(self, now: datetime) -> bool:
        """Still allowing access: not expired, not found inappropriate."""
        return now < self.valid_until and self.review.status != pb.REVIEW_STATUS_INAPPROPRIATE


@dataclass(frozen=True, slots=True)
class RepresentationRecord:
    """One appointment of a legal representative, active or ended."""

    representation_id: str
    patient_id: str
    representative_id: str
    appointed_by: str
    legal_basis: pb.LegalBasis.ValueType
    evidence_sha256: bytes
    appointed_at: datetime
    review: Review
    ended_by: str = ""
    ended_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.ended_at is None


@dataclass(frozen=True, slots=True)
class PatientState:
    """Everything decided about one patient, folded from consent.events."""

    patient_id: str
    consents: Mapping[str, ConsentRecord] = field(default_factory=dict)
    # grantee id -> ids of the consents naming it, oldest first
    grants: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    break_glass: Mapping[str, BreakGlassRecord] = field(default_factory=dict)
    # representation id -> appointment, oldest first; representatives: the
    # representative ids of the active ones
    representations: Mapping[str, RepresentationRecord] = field(default_factory=dict)
    representatives: frozenset[str] = frozenset()

    def active_representation(self, representative_id: str) -> RepresentationRecord | None:
        return next(
            (r for r in self.representations.values() if r.active and r.representative_id == representative_id), None
        )

    def consents_for(self, grantee_id: str) -> tuple[ConsentRecord, ...]:
        return tuple(self.consents[c] for c in self.grants.get(grantee_id, ()))

    def may_act_for_patient(self, identity_id: str) -> bool:
        """The patient or a registered legal representative."""
        return identity_id == self.patient_id or identity_id in self.representatives


@dataclass(frozen=True, slots=True)
class Recorded:
    """An event as it was recorded: its envelope's id, time and actor."""

    event_id: str
    occurred_at: datetime
    actor: str
    payload: Message


def signer_role(terms: pb.ConsentTerms, state: PatientState) -> pb.SignerRole.ValueType:
    """The patient, or a registered representative; PermissionDenied otherwise."""
    if terms.signer_id == terms.patient_id:
        return pb.SIGNER_ROLE_PATIENT
    if terms.signer_id in state.representatives:
        return pb.SIGNER_ROLE_REPRESENTATIVE
    raise PermissionDenied(
        f"{terms.signer_id} is neither patient {terms.patient_id} nor a registered legal representative of theirs"
    )


def grantee_kind(grantee: IdentityFacts) -> pb.GranteeKind.ValueType:
    """A practitioner or an organization that is active."""
    kind = GRANTEE_KINDS.get(grantee.kind)
    if kind is None:
        raise InvalidArgument(f"grantee {grantee.identity_id} is a {grantee.kind}; only practitioners and organizations can be granted access")
    if not grantee.active:
        raise FailedPrecondition(f"grantee {grantee.identity_id} is revoked")
    return kind


def require_patient(patient: IdentityFacts) -> None:
    if patient.kind != "PATIENT":
        raise InvalidArgument(f"{patient.identity_id} is a {patient.kind}, not a patient")
    if not patient.active:
        raise FailedPrecondition(f"patient {patient.identity_id} is revoked")


def may_view(state: PatientState, subject: str, kind: str) -> bool:
    """ListConsents and WhoCanAccess: the patient, a representative, an auditor."""
    return kind == "AUDITOR" or state.may_act_for_patient(subject)


# ---- commands ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GrantConsent:
    terms: pb.ConsentTerms
    signature: bytes
    grantee: IdentityFacts
    submitted_by: str


@dataclass(frozen=True, slots=True)
class RevokeConsent:
    consent_id: str
    by: str


@dataclass(frozen=True, slots=True)
class ExpireConsent:
    consent_id: str
    now: datetime


@dataclass(frozen=True, slots=True)
class InvokeBreakGlass:
    break_glass_id: str
    practitioner: IdentityFacts
    organization_id: str
    justification_sha256: bytes
    valid_until: datetime
    reason: pb.BreakGlassReason.ValueType


@dataclass(frozen=True, slots=True)
class ReviewBreakGlass:
    break_glass_id: str
    reviewer: Actor
    outcome: pb.ReviewStatus.ValueType
    note_sha256: bytes


@dataclass(frozen=True, slots=True)
class RegisterRepresentative:
    """An appointment: signed by the patient (``patient_signed``, its signature
    already verified by the adapter) or made by the patient's registering
    organization, stating the legal basis and the evidence's SHA-256."""

    representation_id: str
    representative: IdentityFacts
    patient: IdentityFacts
    by: str
    legal_basis: pb.LegalBasis.ValueType = pb.LEGAL_BASIS_UNSPECIFIED
    evidence_sha256: bytes = b""
    appointment: bytes = b""
    signature: bytes = b""

    @property
    def patient_signed(self) -> bool:
        return bool(self.appointment)


@dataclass(frozen=True, slots=True)
class EndRepresentation:
    representative_id: str
    patient: IdentityFacts
    by: Actor


@dataclass(frozen=True, slots=True)
class ReviewRepresentation:
    representation_id: str
    reviewer: Actor
    outcome: pb.ReviewStatus.ValueType
    note_sha256: bytes


Command = (
    GrantConsent | RevokeConsent | ExpireConsent | InvokeBreakGlass | ReviewBreakGlass | RegisterRepresentative
    | EndRepresentation | ReviewRepresentation
)


def break_glass_organization(practitioner: IdentityFacts, requested: str) -> str:
    """The organization a break-glass is made under: the one named, which must be
    an active membership, or the only active one."""
    if practitioner.kind != "PRACTITIONER" or not practitioner.active:
        raise PermissionDenied("break-glass is for active practitioners only")
    if not practitioner.organizations:
        raise PermissionDenied("break-glass needs an active organization membership")
    if requested:
        if requested not in practitioner.organizations:
            raise PermissionDenied(f"no active membership in organization {requested}")
        return requested
    if len(practitioner.organizations) > 1:
        raise InvalidArgument("the practitioner has several active memberships: name organization_id")
    return next(iter(practitioner.organizations))


def require_break_glass_allowance(invoked_in_last_day: int, daily_limit: int) -> None:
    """A practitioner may break the glass at most daily_limit times in any 24
    hours: emergencies are rare, and a practitioner opening record after record
    this way is what the limit stops."""
    if invoked_in_last_day >= daily_limit:
        raise ResourceExhausted(
            f"the practitioner already invoked {invoked_in_last_day} break-glass accesses in the last 24 hours "
            f"(limit {daily_limit}); ask the patient for consent or a colleague"
        )


def require_break_glass_reason(reason: pb.BreakGlassReason.ValueType) -> None:
    if reason not in BREAK_GLASS_REASONS:
        raise InvalidArgument("reason is required: a BreakGlassReason other than UNSPECIFIED")


def require_review_outcome(outcome: pb.ReviewStatus.ValueType) -> None:
    if outcome not in REVIEW_OUTCOMES:
        raise InvalidArgument("outcome must be REVIEW_STATUS_APPROVED or REVIEW_STATUS_INAPPROPRIATE")


def may_review_break_glass(reviewer: Actor, record: BreakGlassRecord) -> bool:
    """An auditor, or the organization the break-glass was made under."""
    return reviewer.kind == "AUDITOR" or (reviewer.kind == "ORGANIZATION" and reviewer.identity_id == record.organization_id)


def _require_pending(review: Review, what: str) -> None:
    if review.status == pb.REVIEW_STATUS_NOT_REQUIRED:
        raise FailedPrecondition(f"{what} needs no review: the patient made it with their own signature")
    if not review.pending:
        raise FailedPrecondition(f"{what} was reviewed already by {review.reviewer_id}")


def _appointment_event(state: PatientState, command: RegisterRepresentative) -> pb.RepresentativeRegistered:
    """The patient's own signed appointment, or the registering organization's
    stating its legal basis and evidence (flagged for review)."""
    patient = command.patient
    if command.patient_signed:
        return pb.RepresentativeRegistered(
            patient_id=state.patient_id, representative_id=command.representative.identity_id,
            registered_by=patient.identity_id, representation_id=command.representation_id,
            legal_basis=pb.LEGAL_BASIS_PATIENT_SIGNED, appointment=command.appointment, signature=command.signature,
        )
    if command.by == patient.identity_id:
        raise PermissionDenied("a patient appoints a representative by signing a RepresentativeAppointment")
    if not patient.registered_by or command.by != patient.registered_by:
        raise PermissionDenied("only the patient, by signature, or the organization that registered them can appoint a representative")
    if command.legal_basis not in ORGANIZATION_LEGAL_BASES:
        raise InvalidArgument("an organization's appointment needs legal_basis (not UNSPECIFIED nor PATIENT_SIGNED)")
    if len(command.evidence_sha256) != SHA256_BYTES:
        raise InvalidArgument("an organization's appointment needs evidence_sha256: the evidence document's 32-byte SHA-256")
    return pb.RepresentativeRegistered(
        patient_id=state.patient_id, representative_id=command.representative.identity_id, registered_by=command.by,
        representation_id=command.representation_id, legal_basis=command.legal_basis,
        evidence_sha256=command.evidence_sha256, review_required=True,
    )


def may_end_representation(by: Actor, record: RepresentationRecord) -> bool:
    """The patient, an auditor, the representative (resigning), or whoever
    made that appointment (an organization undoing its own)."""
    return by.identity_id in (record.patient_id, record.representative_id, record.appointed_by) or by.kind == "AUDITOR"


def decide(state: PatientState, command: Command) -> list[Message]:
    """The events a command produces against the patient's current state, or a
    MedLedgerError saying why it is refused. An empty list: nothing to do (the
    command was already carried out)."""
    match command:
        case GrantConsent(terms=terms, signature=signature, grantee=grantee, submitted_by=submitted_by):
            if terms.consent_id in state.consents:
                raise AlreadyExists(f"consent {terms.consent_id} already exists")
            return [pb.ConsentGranted(
                terms=terms, signature=signature, grantee_kind=grantee_kind(grantee),
                signer_role=signer_role(terms, state), submitted_by=submitted_by,
            )]
        case RevokeConsent(consent_id=consent_id, by=by):
            consent = state.consents.get(consent_id)
            if consent is None:
                raise NotFound(f"consent {consent_id} not found")
            if not state.may_act_for_patient(by):
                raise PermissionDenied(f"only patient {state.patient_id} or their representative can revoke consent {consent_id}")
            if consent.revoked_at is not None:
                return []
            return [pb.ConsentRevoked(consent_id=consent_id, patient_id=state.patient_id, revoked_by=by)]
        case ExpireConsent(consent_id=consent_id, now=now):
            consent = state.consents.get(consent_id)
            if consent is None or consent.expiry_recorded or consent.status(now) != pb.CONSENT_STATUS_EXPIRED:
                return []
            return [pb.ConsentExpired(
                consent_id=consent_id, patient_id=state.patient_id, valid_until=timestamp(consent.valid_until)
            )]
        case InvokeBreakGlass():
            require_break_glass_reason(command.reason)
            organization = break_glass_organization(command.practitioner, command.organization_id)
            return [pb.BreakGlassInvoked(
                break_glass_id=command.break_glass_id, patient_id=state.patient_id,
                practitioner_id=command.practitioner.identity_id, organization_id=organization,
                justification_sha256=command.justification_sha256, valid_until=timestamp(command.valid_until),
                review_required=True, reason=command.reason,
            )]
        case ReviewBreakGlass(break_glass_id=bg_id, reviewer=reviewer, outcome=outcome, note_sha256=note):
            require_review_outcome(outcome)
            record = state.break_glass.get(bg_id)
            if record is None:
                raise NotFound(f"break-glass {bg_id} not found")
            if not may_review_break_glass(reviewer, record):
                raise PermissionDenied("only an auditor or the organization it was made under can review a break-glass")
            _require_pending(record.review, f"break-glass {bg_id}")
            return [pb.BreakGlassReviewed(
                break_glass_id=bg_id, patient_id=state.patient_id, organization_id=record.organization_id,
                outcome=outcome, reviewer_id=reviewer.identity_id, note_sha256=note,
            )]
        case RegisterRepresentative(representative=rep):
            if rep.kind not in REPRESENTATIVE_KINDS or not rep.active:
                raise InvalidArgument(f"{rep.identity_id} must be an active person (patient or practitioner identity)")
            if rep.identity_id == state.patient_id:
                raise InvalidArgument("a patient cannot be their own representative")
            if command.representation_id in state.representations:
                raise AlreadyExists(f"appointment {command.representation_id} already exists")
            event = _appointment_event(state, command)
            return [] if rep.identity_id in state.representatives else [event]
        case EndRepresentation(representative_id=rep_id, by=by):
            current = state.active_representation(rep_id)
            if current is None:
                raise NotFound(f"{rep_id} is not a representative of {state.patient_id}")
            if not may_end_representation(by, current):
                raise PermissionDenied("only the patient, an auditor, the representative or the appointing organization can end a representation")
            return [pb.RepresentationEnded(
                patient_id=state.patient_id, representative_id=rep_id, ended_by=by.identity_id,
                representation_id=current.representation_id,
            )]
        case ReviewRepresentation(representation_id=rid, reviewer=reviewer, outcome=outcome, note_sha256=note):
            require_review_outcome(outcome)
            appointment = state.representations.get(rid)
            if appointment is None:
                raise NotFound(f"representation {rid} not found")
            if reviewer.kind != "AUDITOR":
                raise PermissionDenied("only an auditor can review an organization's appointment of a representative")
            _require_pending(appointment.review, f"representation {rid}")
            reviewed: list[Message] = [pb.RepresentationReviewed(
                representation_id=rid, patient_id=state.patient_id, representative_id=appointment.representative_id,
                outcome=outcome, reviewer_id=reviewer.identity_id, note_sha256=note,
            )]
            if outcome == pb.REVIEW_STATUS_INAPPROPRIATE and appointment.active:
                reviewed.append(pb.RepresentationEnded(
                    patient_id=state.patient_id, representative_id=appointment.representative_id,
                    ended_by=reviewer.identity_id, representation_id=rid,
                ))
            return reviewed
    raise TypeError(f"unknown command {command!r}")


# ---- evolving state ------------------------------------------------------------


def _granted(state: PatientState, event: pb.ConsentGranted, recorded: Recorded) -> PatientState:
    terms = event.terms
    if terms.consent_id in state.consents:
        return state
    consent = ConsentRecord(
        consent_id=terms.consent_id, patient_id=sys.intern(terms.patient_id), grantee_id=sys.intern(terms.grantee_id),
        grantee_kind=event.grantee_kind, purposes=_shared(frozenset(terms.purposes)), scope=Scope.from_proto(terms.scope),
        valid_from=utc(terms.valid_from), valid_until=utc(terms.valid_until),
        encoded_terms=terms.SerializeToString(deterministic=True), signature=event.signature,
        signer_role=event.signer_role, granted_at=recorded.occurred_at, granted_event_id=recorded.event_id,
    )
    grants = dict(state.grants)
    grants[consent.grantee_id] = grants.get(consent.grantee_id, ()) + (consent.consent_id,)
    return replace(state, consents={**state.consents, consent.consent_id: consent}, grants=grants)


def _changed(state: PatientState, consent: ConsentRecord) -> PatientState:
    return replace(state, consents={**state.consents, consent.consent_id: consent})


def break_glass_record(event: pb.BreakGlassInvoked, event_id: str, occurred_at: datetime) -> BreakGlassRecord:
    return BreakGlassRecord(
        break_glass_id=event.break_glass_id, patient_id=event.patient_id, practitioner_id=event.practitioner_id,
        organization_id=event.organization_id, justification_sha256=event.justification_sha256,
        invoked_at=occurred_at, valid_until=utc(event.valid_until), event_id=event_id, reason=event.reason,
    )


def representation_id(event: pb.RepresentativeRegistered, recorded: Recorded) -> str:
    """The appointment's id; the event's own id for appointments recorded
    before appointments had ids."""
    return event.representation_id or recorded.event_id


def _review(event: pb.BreakGlassReviewed | pb.RepresentationReviewed, recorded: Recorded) -> Review:
    return Review(event.outcome, event.reviewer_id, recorded.occurred_at, event.note_sha256)


def _with_representations(state: PatientState, representations: dict[str, RepresentationRecord]) -> PatientState:
    active = frozenset(r.representative_id for r in representations.values() if r.active)
    return replace(state, representations=representations, representatives=active)


def _evolve_oversight(state: PatientState, recorded: Recorded) -> PatientState:
    """Break-glass reviews and representative appointments."""
    event = recorded.payload
    if isinstance(event, pb.BreakGlassReviewed):
        record = state.break_glass.get(event.break_glass_id)
        if record is None or not record.review.pending:
            return state
        changed = replace(record, review=_review(event, recorded))
        return replace(state, break_glass={**state.break_glass, record.break_glass_id: changed})
    if isinstance(event, pb.RepresentativeRegistered):
        rid = representation_id(event, recorded)
        if rid in state.representations:
            return state
        appointment = RepresentationRecord(
            representation_id=rid, patient_id=event.patient_id, representative_id=event.representative_id,
            appointed_by=event.registered_by, legal_basis=event.legal_basis, evidence_sha256=event.evidence_sha256,
            appointed_at=recorded.occurred_at, review=PENDING_REVIEW if event.review_required else NO_REVIEW,
        )
        return _with_representations(state, {**state.representations, rid: appointment})
    if isinstance(event, pb.RepresentationEnded):
        ending = state.representations.get(event.representation_id) or state.active_representation(event.representative_id)
        if ending is None or not ending.active:
            return state
        ended = replace(ending, ended_by=event.ended_by, ended_at=recorded.occurred_at)
        return _with_representations(state, {**state.representations, ended.representation_id: ended})
    if isinstance(event, pb.RepresentationReviewed):
        under_review = state.representations.get(event.representation_id)
        if under_review is None or not under_review.review.pending:
            return state
        reviewed = replace(under_review, review=_review(event, recorded))
        return _with_representations(state, {**state.representations, reviewed.representation_id: reviewed})
    return state


def evolve(state: PatientState, recorded: Recorded) -> PatientState:
    """The patient's state after one recorded event (unchanged for events that
    are repeats or do not concern consents)."""
    event = recorded.payload
    if isinstance(event, pb.ConsentGranted):
        return _granted(state, event, recorded)
    if isinstance(event, pb.ConsentRevoked):
        consent = state.consents.get(event.consent_id)
        if consent is None or consent.revoked_at is not None:
            return state
        return _changed(state, replace(consent, revoked_at=recorded.occurred_at, revoked_by=event.revoked_by))
    if isinstance(event, pb.ConsentExpired):
        consent = state.consents.get(event.consent_id)
        if consent is None or consent.expiry_recorded:
            return state
        return _changed(state, replace(consent, expiry_recorded=True))
    if isinstance(event, pb.BreakGlassInvoked):
        if event.break_glass_id in state.break_glass:
            return state
        record = break_glass_record(event, recorded.event_id, recorded.occurred_at)
        return replace(state, break_glass={**state.break_glass, record.break_glass_id: record})
    return _evolve_oversight(state, recorded)


def aggregate_id(event: Message) -> str:
    """The patient an event is about: its Kafka key and envelope aggregate_id."""
    if isinstance(event, pb.ConsentGranted):
        return str(event.terms.patient_id)
    return str(getattr(event, "patient_id"))
