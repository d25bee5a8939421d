"""RecordsService over gRPC: a thin adapter from records.proto to the commands
(commands.py), the reads (reads.py) and the research reads (research.py).

Every method needs a bearer token (AuthInterceptor). Who may call what, at
the token level (the rules beyond it are in domain.py): writes —
PRACTITIONER; reads of records — PATIENT and PRACTITIONER; erasure — any
caller (the patient's or representative's signature is the authority);
research registration — ORGANIZATION and PRACTITIONER; research
verification and timelines — any caller.
"""

from __future__ import annotations

from typing import TypeAlias

import grpc

from medledger.records.commands import RecordsCommands
from medledger.records.disclosures import DisclosureReads
from medledger.records.peers import forwarded_authorization
from medledger.records.reads import RecordsReads
from medledger.records.research import ResearchReads
from medledger.records import metrics, views
from medledger.runtime.auth import current_caller
from medledger.v1 import records_pb2 as pb
from medledger.v1 import records_pb2_grpc

SERVICE = "/medledger.v1.RecordsService/"
READERS = frozenset({"PATIENT", "PRACTITIONER"})
ALLOWED_KINDS: dict[str, frozenset[str]] = {
    SERVICE + "CreateRecord": frozenset({"PRACTITIONER"}),
    SERVICE + "AmendRecord": frozenset({"PRACTITIONER"}),
    SERVICE + "GetRecord": READERS,
    SERVICE + "ListPatientRecords": READERS,
    SERVICE + "GetRecordHistory": READERS,
    SERVICE + "ExportPatientRecords": READERS,
    SERVICE + "RegisterResearchArtifact": frozenset({"ORGANIZATION", "PRACTITIONER"}),
    # the patient, a representative (a patient or practitioner), an auditor
    SERVICE + "ListDisclosures": frozenset({"PATIENT", "PRACTITIONER", "AUDITOR"}),
}

Context: TypeAlias = "grpc.aio.ServicerContext[object, object]"


class RecordsApi(records_pb2_grpc.RecordsServiceServicer):
    def __init__(self, commands: RecordsCommands, reads: RecordsReads, research: ResearchReads,
                 disclosures: DisclosureReads) -> None:
        self.commands = commands
        self.reads = reads
        self.research = research
        self.disclosures = disclosures

    async def CreateRecord(self, request: pb.CreateRecordRequest, context: Context) -> pb.RecordReceipt:
        receipt = await self.commands.create(current_caller(), request)
        metrics.written("CreateRecord", request.attestation)
        return receipt

    async def AmendRecord(self, request: pb.AmendRecordRequest, context: Context) -> pb.RecordReceipt:
        receipt = await self.commands.amend(current_caller(), request)
        metrics.written("AmendRecord", request.attestation)
        return receipt

    async def GetRecord(self, request: pb.GetRecordRequest, context: Context) -> pb.GetRecordResponse:
        reply = await self.reads.get(current_caller(), forwarded_authorization(context.invocation_metadata()), request)
        metrics.served("GetRecord", [reply.record], len(reply.disclosure_event_ids))
        return reply

    async def ListPatientRecords(self, request: pb.ListPatientRecordsRequest, context: Context) -> pb.ListPatientRecordsResponse:
        reply = await self.reads.list(current_caller(), forwarded_authorization(context.invocation_metadata()), request)
        metrics.served("ListPatientRecords", list(reply.records), len(reply.disclosure_event_ids))
        return reply

    async def GetRecordHistory(self, request: pb.GetRecordHistoryRequest, context: Context) -> pb.GetRecordHistoryResponse:
        reply = await self.reads.history(current_caller(), forwarded_authorization(context.invocation_metadata()), request)
        metrics.served("GetRecordHistory", list(reply.versions), len(reply.disclosure_event_ids))
        return reply

    async def ExportPatientRecords(self, request: pb.ExportPatientRecordsRequest, context: Context) -> pb.ExportPatientRecordsResponse:
        reply = await self.reads.export(current_caller(), forwarded_authorization(context.invocation_metadata()), request)
        metrics.exported(reply.record_count, len(reply.disclosure_event_ids))
        return reply

    async def ErasePatientData(self, request: pb.ErasePatientDataRequest, context: Context) -> pb.ErasePatientDataResponse:
        reply = await self.commands.erase(current_caller(), request.request, request.signature)
        metrics.erased(reply.versions_erased)
        return reply

    async def RegisterResearchArtifact(self, request: pb.RegisterResearchArtifactRequest, context: Context) -> pb.ResearchArtifact:
        stored = await self.commands.register_artifact(current_caller(), request)
        timeline = await self.research.timeline(stored.trial_id)
        flagged = next((a.before_protocol for a in timeline.artifacts if a.artifact_id == stored.artifact_id), False)
        return views.artifact_message(stored, flagged)

    async def VerifyResearchArtifact(self, request: pb.VerifyResearchArtifactRequest, context: Context) -> pb.VerifyResearchArtifactResponse:
        return await self.research.verify(request.sha256)

    async def ListTrialArtifacts(self, request: pb.ListTrialArtifactsRequest, context: Context) -> pb.ListTrialArtifactsResponse:
        return await self.research.timeline(request.trial_id)

    async def ListDisclosures(self, request: pb.ListDisclosuresRequest, context: Context) -> pb.ListDisclosuresResponse:
        return await self.disclosures.list(current_caller(), request)
