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
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Hashable, Mapping, TypeVar

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from medledger.runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from medledger.v1 import consent_pb2 as pb

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

GRANTEE_KINDS: Mapping[str, int] = MappingProxyType({
    "PRACTITIONER": pb.GRANTEE_KIND_PRACTITIONER,
    "ORGANIZATION": pb.GRANTEE_KIND_ORGANIZATION,
})
# A legal representative is a person: registered as a patient or a practitioner.
REPRESENTATIVE_KINDS = frozenset({"PATIENT", "PRACTITIONER"})



def utc(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=timezone.utc)


def timestamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


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
    grantee_kind: int
    purposes: frozenset[int]
    scope: Scope
    valid_from: datetime
    valid_until: datetime
    encoded_terms: bytes
    signature: bytes
    signer_role: int
    granted_at: datetime
    granted_event_id: str
    revoked_at: datetime | None = None
    revoked_by: str = ""
    expiry_recorded: bool = False

    def status(self, now: datetime) -> int:
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
class BreakGlassRecord:
    break_glass_id: str
    patient_id: str
    practitioner_id: str
    organization_id: str
    justification_sha256: bytes
    invoked_at: datetime
    valid_until: datetime
    event_id: str


@dataclass(frozen=True, slots=True)
class PatientState:
    """Everything decided about one patient, folded from consent.events."""

    patient_id: str
    consents: Mapping[str, ConsentRecord] = field(default_factory=dict)
    # grantee id -> ids of the consents naming it, oldest first
    grants: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    break_glass: Mapping[str, BreakGlassRecord] = field(default_factory=dict)
    representatives: frozenset[str] = frozenset()

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


def signer_role(terms: pb.ConsentTerms, state: PatientState) -> int:
    """The patient, or a registered representative; PermissionDenied otherwise."""
    if terms.signer_id == terms.patient_id:
        return pb.SIGNER_ROLE_PATIENT
    if terms.signer_id in state.representatives:
        return pb.SIGNER_ROLE_REPRESENTATIVE
    raise PermissionDenied(
        f"{terms.signer_id} is neither patient {terms.patient_id} nor a registered legal representative of theirs"
    )


def grantee_kind(grantee: IdentityFacts) -> int:
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


@dataclass(frozen=True, slots=True)
class RegisterRepresentative:
    representative: IdentityFacts
    patient: IdentityFacts
    by: str


@dataclass(frozen=True, slots=True)
class EndRepresentation:
    representative_id: str
    patient: IdentityFacts
    by: str


Command = GrantConsent | RevokeConsent | ExpireConsent | InvokeBreakGlass | RegisterRepresentative | EndRepresentation


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


def _may_manage_representatives(patient: IdentityFacts, by: str) -> bool:
    """The patient, or the organization that registered (and identity-proofed) them."""
    return by == patient.identity_id or (bool(patient.registered_by) and by == patient.registered_by)


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
            organization = break_glass_organization(command.practitioner, command.organization_id)
            return [pb.BreakGlassInvoked(
                break_glass_id=command.break_glass_id, patient_id=state.patient_id,
                practitioner_id=command.practitioner.identity_id, organization_id=organization,
                justification_sha256=command.justification_sha256, valid_until=timestamp(command.valid_until),
                review_required=True,
            )]
        case RegisterRepresentative(representative=rep, patient=patient, by=by):
            if not _may_manage_representatives(patient, by):
                raise PermissionDenied("only the patient or the organization that registered them can register a representative")
            if rep.kind not in REPRESENTATIVE_KINDS or not rep.active:
                raise InvalidArgument(f"{rep.identity_id} must be an active person (patient or practitioner identity)")
            if rep.identity_id == state.patient_id:
                raise InvalidArgument("a patient cannot be their own representative")
            if rep.identity_id in state.representatives:
                return []
            return [pb.RepresentativeRegistered(patient_id=state.patient_id, representative_id=rep.identity_id, registered_by=by)]
        case EndRepresentation(representative_id=rep_id, patient=patient, by=by):
            if not (_may_manage_representatives(patient, by) or by == rep_id):
                raise PermissionDenied("only the patient, their registering organization or the representative can end a representation")
            if rep_id not in state.representatives:
                raise NotFound(f"{rep_id} is not a representative of {state.patient_id}")
            return [pb.RepresentationEnded(patient_id=state.patient_id, representative_id=rep_id, ended_by=by)]
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
        invoked_at=occurred_at, valid_until=utc(event.valid_until), event_id=event_id,
    )


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
    if isinstance(event, pb.RepresentativeRegistered):
        return replace(state, representatives=state.representatives | {event.representative_id})
    if isinstance(event, pb.RepresentationEnded):
        return replace(state, representatives=state.representatives - {event.representative_id})
    return state


def aggregate_id(event: Message) -> str:
    """The patient an event is about: its Kafka key and envelope aggregate_id."""
    if isinstance(event, pb.ConsentGranted):
        return str(event.terms.patient_id)
    return str(getattr(event, "patient_id"))
