"""ConsentService over gRPC: a thin adapter from consent.proto to the commands
(commands.py) and the decisions over this replica's projection (decisions.py).

Every method needs a bearer token (AuthInterceptor). Who may call what:
CheckAccess — practitioners and organizations, always for the token's
subject (a service forwards its user's own token, so the decision and the
ledger name the person who reads); InvokeBreakGlass — practitioners;
ReviewBreakGlass — auditors and the organization it was made under;
ReviewRepresentation — auditors; ListPendingReviews — auditors and
organizations (their own); ListConsents and WhoCanAccess — the patient, a
registered representative or an auditor; GetConsent and ExportFhirConsent —
those and the grantee (or a member, SERVICE included, of the grantee
organization). Auditors act within their remit (README, Authorization
matrix): a network auditor on everything, an organization auditor on what
concerns its organizations' patients and members (``organizations_of``);
GrantConsent — any caller (the patient's signature is the authority);
RevokeConsent — the patient or a representative; RegisterRepresentative —
the patient's signature, or the registering organization;
EndRepresentation — the patient, an auditor, the representative or the
appointing organization.

Statuses: INVALID_ARGUMENT for malformed requests and terms (unsigned,
empty purposes, a window that ends before it starts, a category that is not a
FHIR resource type, ...); PERMISSION_DENIED when the signature does not
verify or the signer or caller may not act for the patient; NOT_FOUND for
unknown consents, patients, grantees, break-glasses and appointments;
ALREADY_EXISTS for a consent or appointment id used before;
FAILED_PRECONDITION for a second review; RESOURCE_EXHAUSTED past the daily
break-glass limit; UNAVAILABLE when this replica's projection is too stale to
decide (try another) or Kafka is away.
"""

from __future__ import annotations

from datetime import datetime
from itertools import islice
from typing import Callable, TypeAlias

import grpc

from medledger.consent import decisions, domain, metrics, store, validation
from medledger.consent.commands import ConsentCommands, utcnow
from medledger.consent.decision_log import DecisionLog
from medledger.consent.domain import BreakGlassRecord, ConsentRecord, PatientState, RepresentationRecord
from medledger.consent.fhir import export_consent, is_resource_type
from medledger.consent.projection import Projection
from medledger.consent.stream import ConsentStream
from medledger.consent.views import (
    break_glass_message, consent_message, decision_message, grantees_message, representation_message,
)
from medledger.runtime.auth import ORGANIZATION_AUDITOR, Caller, current_caller
from medledger.runtime.errors import InvalidArgument, NotFound, PermissionDenied
from medledger.v1 import consent_pb2 as pb
from medledger.v1 import consent_pb2_grpc

import asyncpg

SERVICE = "/medledger.v1.ConsentService/"
VIEWERS = frozenset({"PATIENT", "PRACTITIONER", "AUDITOR"})
REVIEWERS = frozenset({"AUDITOR", "ORGANIZATION"})
ALLOWED_KINDS: dict[str, frozenset[str]] = {
    SERVICE + "CheckAccess": frozenset({"PRACTITIONER", "ORGANIZATION"}),
    SERVICE + "InvokeBreakGlass": frozenset({"PRACTITIONER"}),
    SERVICE + "ReviewBreakGlass": REVIEWERS,
    SERVICE + "ReviewRepresentation": frozenset({"AUDITOR"}),
    SERVICE + "ListPendingReviews": REVIEWERS,
    SERVICE + "ListConsents": VIEWERS,
    SERVICE + "WhoCanAccess": VIEWERS,
    SERVICE + "RevokeConsent": frozenset({"PATIENT", "PRACTITIONER"}),
    SERVICE + "RegisterRepresentative": frozenset({"PATIENT", "ORGANIZATION"}),
    SERVICE + "EndRepresentation": frozenset({"PATIENT", "ORGANIZATION", "PRACTITIONER", "AUDITOR"}),
}
MAX_PENDING_PAGE = 100

Context: TypeAlias = "grpc.aio.ServicerContext[object, object]"


def _required(value: str, name: str) -> str:
    if not value:
        raise InvalidArgument(f"{name} is required")
    return value


def organizations_of(view: Projection, *identity_ids: str) -> frozenset[str]:
    """What an auditor's remit is judged by (least privilege, issue 9 item 7):
    each identity's registering organization, its memberships, and itself
    when it is an organization."""
    found: set[str] = set()
    for identity_id in identity_ids:
        facts = view.identity(identity_id)
        if facts is not None:
            found.update({facts.registered_by, *facts.organizations, *((identity_id,) if facts.kind == "ORGANIZATION" else ())})
    return frozenset(found - {""})


def may_see_patient(view: Projection, state: PatientState, caller: Caller) -> bool:
    """ListConsents and WhoCanAccess: the patient, a representative, a network
    auditor, or an auditor of the organization that registered the patient."""
    if caller.kind == "AUDITOR":
        return caller.audits(organizations_of(view, state.patient_id))
    return domain.may_view(state, caller.subject, caller.kind)


def may_read_consent(view: Projection, state: PatientState, consent: ConsentRecord, caller: Caller) -> bool:
    """Those who see the patient, the grantee and the grantee organization's
    members (a SERVICE only as such a member), and auditors of any of them."""
    if caller.kind == "AUDITOR":
        return caller.audits(organizations_of(view, state.patient_id, consent.grantee_id))
    return (
        may_see_patient(view, state, caller)
        or caller.subject == consent.grantee_id
        or consent.grantee_id in caller.organizations
    )


class ConsentApi(consent_pb2_grpc.ConsentServiceServicer):
    def __init__(
        self, commands: ConsentCommands, projection: Projection, stream: ConsentStream, decision_log: DecisionLog,
        pool: Callable[[], asyncpg.Pool], max_staleness_s: float, clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.commands = commands
        self.projection = projection
        self.stream = stream
        self.decision_log = decision_log
        self.pool = pool
        self.max_staleness_s = max_staleness_s
        self.clock = clock

    def _fresh(self) -> None:
        self.stream.require_fresh(self.max_staleness_s)

    def _consent_message(self, consent: ConsentRecord) -> pb.Consent:
        return consent_message(consent, self.clock(), self.projection.ledger_index(consent.granted_event_id))

    def _readable(self, consent_id: str) -> ConsentRecord:
        self._fresh()
        consent = self.projection.consent(_required(consent_id, "consent_id"))
        if consent is None:
            raise NotFound(f"consent {consent_id} not found")
        state = self.projection.patient(consent.patient_id) or PatientState(consent.patient_id)
        if not may_read_consent(self.projection, state, consent, current_caller()):
            raise PermissionDenied(f"the caller may not read consent {consent_id}")
        return consent

    def _viewable(self, patient_id: str) -> PatientState:
        self._fresh()
        state = self.projection.patient(_required(patient_id, "patient_id")) or PatientState(patient_id)
        if not may_see_patient(self.projection, state, current_caller()):
            raise PermissionDenied("only the patient, their representative or an auditor of their organization may see this")
        return state

    async def _synced_for_auditor(self, caller: Caller) -> None:
        """An auditor's remit is judged on the projection at the log's end: a
        break-glass or appointment this replica has not seen yet would otherwise
        skip the check and reach the domain, which trusts any AUDITOR."""
        if caller.kind == "AUDITOR":
            await self.commands.stream.sync()

    def _audited(self, caller: Caller, *identity_ids: str) -> None:
        """An auditor acts only within its remit (an organization auditor on what
        concerns its organizations); other callers are judged by the domain."""
        if caller.kind == "AUDITOR" and not caller.audits(organizations_of(self.projection, *identity_ids)):
            raise PermissionDenied("this concerns no organization the auditor audits")

    async def GrantConsent(self, request: pb.GrantConsentRequest, context: Context) -> pb.Consent:
        consent = await self.commands.grant(current_caller(), request.terms, request.signature)
        return self._consent_message(consent)

    async def RevokeConsent(self, request: pb.RevokeConsentRequest, context: Context) -> pb.Consent:
        return self._consent_message(await self.commands.revoke(current_caller(), request.consent_id))

    async def GetConsent(self, request: pb.GetConsentRequest, context: Context) -> pb.Consent:
        return self._consent_message(self._readable(request.consent_id))

    async def ExportFhirConsent(self, request: pb.ExportFhirConsentRequest, context: Context) -> pb.FhirConsent:
        return pb.FhirConsent(json=export_consent(self._readable(request.consent_id), self.clock()))

    async def _break_glass_messages(self, records: list[BreakGlassRecord]) -> list[pb.BreakGlass]:
        """With their justifications and review notes, opened."""
        if not records:
            return []
        ids = [r.break_glass_id for r in records]
        sealer = self.commands.sealer
        async with self.pool().acquire() as conn:
            texts = await store.justifications(conn, sealer, ids)
            notes = await store.review_notes(conn, sealer, store.BREAK_GLASS, ids)
        return [break_glass_message(r, texts.get(r.break_glass_id, ""), notes.get(r.break_glass_id, "")) for r in records]

    async def _representation_messages(self, records: list[RepresentationRecord]) -> list[pb.Representation]:
        """With their review notes, opened."""
        reviewed = [r.representation_id for r in records if r.review.reviewer_id]
        notes: dict[str, str] = {}
        if reviewed:
            async with self.pool().acquire() as conn:
                notes = await store.review_notes(conn, self.commands.sealer, store.REPRESENTATION, reviewed)
        return [representation_message(r, notes.get(r.representation_id, "")) for r in records]

    async def ListConsents(self, request: pb.ListConsentsRequest, context: Context) -> pb.ListConsentsResponse:
        state = self._viewable(request.patient_id)
        return pb.ListConsentsResponse(
            consents=[self._consent_message(c) for c in state.consents.values()],
            break_glass=await self._break_glass_messages(list(state.break_glass.values())),
            representations=await self._representation_messages(list(state.representations.values())),
        )

    async def WhoCanAccess(self, request: pb.WhoCanAccessRequest, context: Context) -> pb.WhoCanAccessResponse:
        state = self._viewable(request.patient_id)
        now = self.clock()
        return pb.WhoCanAccessResponse(
            by_purpose=grantees_message(decisions.who_can_access(self.projection, state.patient_id, now)),
            break_glass=await self._break_glass_messages(decisions.active_break_glass(state, now)),
        )

    async def CheckAccess(self, request: pb.CheckAccessRequest, context: Context) -> pb.AccessDecision:
        caller = current_caller()
        requester = caller.subject  # a service forwards its user's own token: the decision is the reader's
        if request.requester_id and request.requester_id != requester:
            raise PermissionDenied("CheckAccess decides for the token's subject only: forward the reader's own token")
        if request.purpose not in domain.PURPOSE_CODES:
            raise InvalidArgument("purpose must be TREATMENT, PAYMENT, OPERATIONS, RESEARCH or EMERGENCY")
        validation.validate_access_request(request.patient_id, request.category, request.record_id, is_resource_type)
        self._fresh()
        now = self.clock()
        query = decisions.AccessQuery(requester, request.patient_id, request.purpose, request.category, request.record_id)
        verdict = decisions.check_access(self.projection, query, now)
        event_id = await self.decision_log.record(pb.AccessDecided(
            requester_id=requester, patient_id=request.patient_id, purpose=request.purpose,
            category=request.category, record_id=request.record_id, decision=verdict.decision,
            reason=verdict.reason, consent_id=verdict.consent_id, break_glass_id=verdict.break_glass_id,
            asked_by=caller.subject,
        ))
        metrics.decided(request.purpose, verdict)  # answered: its event is on its way
        consent = self.projection.consent(verdict.consent_id) if verdict.consent_id else None
        index = self.projection.ledger_index(consent.granted_event_id) if consent else None
        return decision_message(verdict, event_id, now, index)

    async def InvokeBreakGlass(self, request: pb.InvokeBreakGlassRequest, context: Context) -> pb.BreakGlass:
        record, text = await self.commands.invoke_break_glass(
            current_caller(), request.patient_id, request.justification, request.organization_id, request.reason
        )
        metrics.break_glass_invoked(request.reason)
        return break_glass_message(record, text)

    async def ReviewBreakGlass(self, request: pb.ReviewBreakGlassRequest, context: Context) -> pb.BreakGlass:
        caller = current_caller()
        await self._synced_for_auditor(caller)
        invoked = self.projection.break_glass(request.break_glass_id)
        if invoked is not None:
            self._audited(caller, invoked.organization_id, invoked.patient_id, invoked.practitioner_id)
        record, note = await self.commands.review_break_glass(
            caller, request.break_glass_id, request.outcome, request.note
        )
        metrics.break_glass_reviewed(request.outcome)
        async with self.pool().acquire() as conn:
            texts = await store.justifications(conn, self.commands.sealer, [record.break_glass_id])
        return break_glass_message(record, texts.get(record.break_glass_id, ""), note)

    async def ReviewRepresentation(self, request: pb.ReviewRepresentationRequest, context: Context) -> pb.Representation:
        caller = current_caller()
        await self._synced_for_auditor(caller)
        appointed = self.projection.representation(request.representation_id)
        if appointed is not None:
            self._audited(caller, appointed.patient_id, appointed.appointed_by)
        record, note = await self.commands.review_representation(
            caller, request.representation_id, request.outcome, request.note
        )
        return representation_message(record, note)

    async def ListPendingReviews(self, request: pb.ListPendingReviewsRequest, context: Context) -> pb.ListPendingReviewsResponse:
        caller = current_caller()
        organization = request.organization_id
        if caller.kind == "ORGANIZATION":
            if organization and organization != caller.subject:
                raise PermissionDenied("an organization sees only its own pending reviews")
            organization = caller.subject
        if organization:
            self._audited(caller, organization)
        audited = frozenset(caller.organizations) if caller.role == ORGANIZATION_AUDITOR else None

        def within(org: str) -> bool:
            return (not organization or org == organization) and (audited is None or org in audited)
        if request.page_size > MAX_PENDING_PAGE:
            raise InvalidArgument(f"page_size must be at most {MAX_PENDING_PAGE}")
        limit = request.page_size or MAX_PENDING_PAGE
        self._fresh()
        glass = list(islice(
            (r for r in self.projection.pending_break_glass() if within(r.organization_id)),
            limit + 1,
        ))
        appointed = list(islice(
            (r for r in self.projection.pending_representations() if within(r.appointed_by)),
            limit + 1,
        ))
        return pb.ListPendingReviewsResponse(
            break_glass=await self._break_glass_messages(glass[:limit]),
            representations=await self._representation_messages(appointed[:limit]),
            truncated=len(glass) > limit or len(appointed) > limit,
        )

    async def RegisterRepresentative(self, request: pb.RegisterRepresentativeRequest, context: Context) -> pb.Representation:
        return representation_message(await self.commands.register_representative(current_caller(), request))

    async def EndRepresentation(self, request: pb.EndRepresentationRequest, context: Context) -> pb.Representation:
        caller = current_caller()
        self._audited(caller, request.patient_id)
        ended = await self.commands.end_representation(caller, request.patient_id, request.representative_id)
        return representation_message(ended)
