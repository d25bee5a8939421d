"""ConsentService over gRPC: a thin adapter from consent.proto to the commands
(commands.py) and the decisions over this replica's projection (decisions.py).

Every method needs a bearer token (AuthInterceptor). Who may call what:
CheckAccess — services and practitioners (a practitioner only for itself);
InvokeBreakGlass — practitioners; ListConsents and WhoCanAccess — the
patient, a registered representative or an auditor; GetConsent and
ExportFhirConsent — those, the grantee (or a member of the grantee
organization) and services; GrantConsent — any caller (the patient's
signature is the authority); RevokeConsent — the patient or a representative.

Statuses: INVALID_ARGUMENT for malformed requests and terms (unsigned,
empty purposes, a window that ends before it starts, ...); PERMISSION_DENIED
when the signature does not verify or the signer or caller may not act for
the patient; NOT_FOUND for unknown consents, patients and grantees;
ALREADY_EXISTS for a consent id used before; UNAVAILABLE when this replica's
projection is too stale to decide (try another) or Kafka is away.
"""

from __future__ import annotations

from datetime import datetime
from typing import Callable, TypeAlias

import grpc

from medledger.consent import decisions, domain, store
from medledger.consent.commands import ConsentCommands, utcnow
from medledger.consent.decision_log import DecisionLog
from medledger.consent.domain import ConsentRecord, PatientState
from medledger.consent.fhir import export_consent
from medledger.consent.projection import Projection
from medledger.consent.stream import ConsentStream
from medledger.consent.views import (
    break_glass_message, consent_message, decision_message, grantees_message,
)
from medledger.runtime.auth import Caller, current_caller
from medledger.runtime.errors import InvalidArgument, NotFound, PermissionDenied
from medledger.v1 import consent_pb2 as pb
from medledger.v1 import consent_pb2_grpc

import asyncpg

SERVICE = "/medledger.v1.ConsentService/"
VIEWERS = frozenset({"PATIENT", "PRACTITIONER", "AUDITOR"})
ALLOWED_KINDS: dict[str, frozenset[str]] = {
    SERVICE + "CheckAccess": frozenset({"SERVICE", "PRACTITIONER"}),
    SERVICE + "InvokeBreakGlass": frozenset({"PRACTITIONER"}),
    SERVICE + "ListConsents": VIEWERS,
    SERVICE + "WhoCanAccess": VIEWERS,
    SERVICE + "RevokeConsent": frozenset({"PATIENT", "PRACTITIONER"}),
    SERVICE + "RegisterRepresentative": frozenset({"PATIENT", "ORGANIZATION"}),
    SERVICE + "EndRepresentation": frozenset({"PATIENT", "ORGANIZATION", "PRACTITIONER"}),
}

Context: TypeAlias = "grpc.aio.ServicerContext[object, object]"


def _required(value: str, name: str) -> str:
    if not value:
        raise InvalidArgument(f"{name} is required")
    return value


def may_read_consent(state: PatientState, consent: ConsentRecord, caller: Caller) -> bool:
    return (
        domain.may_view(state, caller.subject, caller.kind)
        or caller.kind == "SERVICE"
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
        if not may_read_consent(state, consent, current_caller()):
            raise PermissionDenied(f"the caller may not read consent {consent_id}")
        return consent

    def _viewable(self, patient_id: str) -> PatientState:
        self._fresh()
        state = self.projection.patient(_required(patient_id, "patient_id")) or PatientState(patient_id)
        caller = current_caller()
        if not domain.may_view(state, caller.subject, caller.kind):
            raise PermissionDenied("only the patient, their representative or an auditor may see this")
        return state

    async def GrantConsent(self, request: pb.GrantConsentRequest, context: Context) -> pb.Consent:
        consent = await self.commands.grant(current_caller(), request.terms, request.signature)
        return self._consent_message(consent)

    async def RevokeConsent(self, request: pb.RevokeConsentRequest, context: Context) -> pb.Consent:
        return self._consent_message(await self.commands.revoke(current_caller(), request.consent_id))

    async def GetConsent(self, request: pb.GetConsentRequest, context: Context) -> pb.Consent:
        return self._consent_message(self._readable(request.consent_id))

    async def ExportFhirConsent(self, request: pb.ExportFhirConsentRequest, context: Context) -> pb.FhirConsent:
        return pb.FhirConsent(json=export_consent(self._readable(request.consent_id), self.clock()))

    async def ListConsents(self, request: pb.ListConsentsRequest, context: Context) -> pb.ListConsentsResponse:
        state = self._viewable(request.patient_id)
        async with self.pool().acquire() as conn:
            texts = await store.justifications(conn, state.patient_id)
        return pb.ListConsentsResponse(
            consents=[self._consent_message(c) for c in state.consents.values()],
            break_glass=[break_glass_message(b, texts.get(b.break_glass_id, "")) for b in state.break_glass.values()],
        )

    async def WhoCanAccess(self, request: pb.WhoCanAccessRequest, context: Context) -> pb.WhoCanAccessResponse:
        state = self._viewable(request.patient_id)
        now = self.clock()
        active = decisions.active_break_glass(state, now)
        texts: dict[str, str] = {}
        if active:
            async with self.pool().acquire() as conn:
                texts = await store.justifications(conn, state.patient_id)
        return pb.WhoCanAccessResponse(
            by_purpose=grantees_message(decisions.who_can_access(self.projection, state.patient_id, now)),
            break_glass=[break_glass_message(b, texts.get(b.break_glass_id, "")) for b in active],
        )

    async def CheckAccess(self, request: pb.CheckAccessRequest, context: Context) -> pb.AccessDecision:
        caller = current_caller()
        requester = request.requester_id or caller.subject
        if caller.kind == "PRACTITIONER" and requester != caller.subject:
            raise PermissionDenied("a practitioner may check access only for itself")
        _required(request.patient_id, "patient_id")
        if request.purpose not in domain.PURPOSE_CODES:
            raise InvalidArgument("purpose must be TREATMENT, PAYMENT, OPERATIONS, RESEARCH or EMERGENCY")
        if not request.category and not request.record_id:
            raise InvalidArgument("name the category or the record id asked for")
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
        consent = self.projection.consent(verdict.consent_id) if verdict.consent_id else None
        index = self.projection.ledger_index(consent.granted_event_id) if consent else None
        return decision_message(verdict, event_id, now, index)

    async def InvokeBreakGlass(self, request: pb.InvokeBreakGlassRequest, context: Context) -> pb.BreakGlass:
        record, text = await self.commands.invoke_break_glass(
            current_caller(), request.patient_id, request.justification, request.organization_id
        )
        return break_glass_message(record, text)

    async def RegisterRepresentative(self, request: pb.RegisterRepresentativeRequest, context: Context) -> pb.Representation:
        await self.commands.register_representative(current_caller(), request.patient_id, request.representative_id)
        return pb.Representation(patient_id=request.patient_id, representative_id=request.representative_id, active=True)

    async def EndRepresentation(self, request: pb.EndRepresentationRequest, context: Context) -> pb.Representation:
        await self.commands.end_representation(current_caller(), request.patient_id, request.representative_id)
        return pb.Representation(patient_id=request.patient_id, representative_id=request.representative_id, active=False)
