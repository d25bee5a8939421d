"""FHIR records, as a hospital system writes and reads them.

Writing: the practitioner's key signs each version on the client. The client
canonicalizes the resource (RFC 8785), draws a fresh 32-byte salt, computes
the commitment ``SHA-256(salt || canonical JSON)`` and signs a
RecordAttestation naming it (``medledger.client.attestation``); the service
checks all of it and stores the version encrypted.

Reading: every read states its purpose (the consent service decides on it
and the disclosure is recorded on the ledger). ``verified`` checks a GetRecord
answer's proof offline against pinned keys, and the author's signature
against the key the identity service says the author used.

Erasure: the patient (or a representative) signs an ErasureRequest; after it,
reads answer with ``erased_at`` and no content, and the ledger still verifies.
"""

from __future__ import annotations

import enum
import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Mapping, TypeVar, cast

from medledger.client.attestation import (
    attestation_message, canonical, canonical_json, commitment, erasure_message, new_salt,
)
from medledger.client.consent import Purpose, wire_purpose
from medledger.client.identity import IdentityClient
from medledger.client.proofs import ProofInvalid, TrustAnchors, VerifiedRecord, verify_record
from medledger.client.session import Session
from medledger.consent.domain import timestamp
from medledger.v1 import consent_pb2, records_pb2, records_pb2_grpc

AUDIENCE = ("records", "consent")
"""Records reads ask consent's CheckAccess with the caller's own token, so the
token must be good for both."""

Resource = Mapping[str, Any] | str
Paged = TypeVar("Paged", records_pb2.ListPatientRecordsRequest, records_pb2.GetRecordHistoryRequest,
                records_pb2.ListDisclosuresRequest)
Page = TypeVar("Page", records_pb2.ListPatientRecordsResponse, records_pb2.GetRecordHistoryResponse,
               records_pb2.ListDisclosuresResponse)


class ArtifactKind(enum.IntEnum):
    """What a registered research document is, as records.proto numbers it."""

    PROTOCOL = records_pb2.ARTIFACT_PROTOCOL
    ANALYSIS_PLAN = records_pb2.ARTIFACT_ANALYSIS_PLAN
    AMENDMENT = records_pb2.ARTIFACT_AMENDMENT
    DATASET = records_pb2.ARTIFACT_DATASET
    RESULTS = records_pb2.ARTIFACT_RESULTS


@dataclass(frozen=True)
class Export:
    """A patient's records as a FHIR Bundle (parsed JSON), how many it holds,
    and the RecordsDisclosed events that account for the export."""

    bundle: dict[str, Any]
    record_count: int
    disclosure_event_ids: tuple[str, ...]


def _parsed(resource: Resource) -> Mapping[str, Any]:
    parsed = json.loads(resource) if isinstance(resource, str) else resource
    if not isinstance(parsed, Mapping) or not isinstance(parsed.get("resourceType"), str):
        raise ValueError("a FHIR resource is a JSON object with a resourceType")
    return parsed


def _purpose(purpose: Purpose | None) -> consent_pb2.Purpose.ValueType:
    return wire_purpose(purpose if purpose is not None else consent_pb2.PURPOSE_UNSPECIFIED)


class RecordsClient:
    """The records service, as the session's identity."""

    def __init__(self, session: Session, stub: records_pb2_grpc.RecordsServiceStub, identity: IdentityClient) -> None:
        self._session = session
        self._stub = stub
        self._identity = identity

    # ---- writing ---------------------------------------------------------------

    def _signed_version(
        self, resource: Resource, attestation: records_pb2.RecordAttestation
    ) -> tuple[bytes, str, bytes, bytes]:
        """(canonical attestation, canonical resource JSON, salt, signature) of a version."""
        content = canonical_json(_parsed(resource))
        salt = new_salt()
        attestation.commitment = commitment(salt, content)
        attestation.author_id = self._session.identity_id
        attestation.author_key_id = self._session.key_id
        attestation.signed_at.CopyFrom(timestamp(datetime.now(timezone.utc)))
        return canonical(attestation), content.decode("utf-8"), salt, self._session.sign(attestation_message(attestation))

    def create(
        self, patient_id: str, resource: Resource, *, organization_id: str, record_id: str | None = None
    ) -> records_pb2.RecordReceipt:
        """Store version 1 of a record about patient_id, written for
        organization_id (where this practitioner is an active member). The
        record id is the resource's own id if it has one, else a new UUID."""
        return self.submit(self.signed_create(patient_id, resource, organization_id=organization_id, record_id=record_id))

    def signed_create(
        self, patient_id: str, resource: Resource, *, organization_id: str, record_id: str | None = None
    ) -> records_pb2.CreateRecordRequest:
        """The signed CreateRecord request ``create`` sends, for systems that
        sign in one place and submit in another (``submit``). Submit it within
        MEDLEDGER_RECORDS_SIGNING_SKEW_S (default 5 minutes) of signing."""
        parsed = _parsed(resource)
        record_id = record_id or str(parsed.get("id") or uuid.uuid4())
        attestation = records_pb2.RecordAttestation(
            record_id=record_id, version=1, patient_id=patient_id, organization_id=organization_id,
            category=str(parsed["resourceType"]),
        )
        encoded, content, salt, signature = self._signed_version(parsed, attestation)
        return records_pb2.CreateRecordRequest(attestation=encoded, resource_json=content, salt=salt, author_signature=signature)

    def submit(self, request: records_pb2.CreateRecordRequest) -> records_pb2.RecordReceipt:
        """Send a signed CreateRecord request."""
        return self._session.call("records CreateRecord", AUDIENCE, self._stub.CreateRecord, request)

    def amend(self, latest: records_pb2.Record, resource: Resource) -> records_pb2.RecordReceipt:
        """Store the next version of a record, given its latest version as read
        (the whole amended resource, not a patch). FailedPrecondition when
        another amendment came first: read again and retry."""
        if latest.version != latest.latest_version:
            raise ValueError(f"amend the latest version ({latest.latest_version}), not version {latest.version}: read it first")
        attestation = records_pb2.RecordAttestation(
            record_id=latest.record_id, version=latest.latest_version + 1, patient_id=latest.patient_id,
            organization_id=latest.custodian_organization_id, category=latest.category,
            previous_commitment=latest.commitment,
        )
        encoded, content, salt, signature = self._signed_version(resource, attestation)
        request = records_pb2.AmendRecordRequest(attestation=encoded, resource_json=content, salt=salt, author_signature=signature)
        return self._session.call("records AmendRecord", AUDIENCE, self._stub.AmendRecord, request)

    # ---- reading ---------------------------------------------------------------

    def get(
        self, record_id: str, *, purpose: Purpose | None = None, version: int = 0, organization_id: str = ""
    ) -> records_pb2.GetRecordResponse:
        """One version (the latest by default) with its ledger proof. Patients
        and representatives may leave purpose out; everyone else states it."""
        request = records_pb2.GetRecordRequest(
            record_id=record_id, version=version, purpose=_purpose(purpose), organization_id=organization_id
        )
        return self._session.call("records GetRecord", AUDIENCE, self._stub.GetRecord, request)

    def verified(self, reply: records_pb2.GetRecordResponse, anchors: TrustAnchors) -> VerifiedRecord:
        """Check a GetRecord answer offline (``medledger.client.proofs``), with
        the author's public key as the identity service resolves the attested
        key id; ProofInvalid if the author's key has been revoked since."""
        attestation = reply.record.attestation
        key = self._identity.resolve_key(attestation.author_id, key_id=attestation.author_key_id)
        verified = verify_record(reply, anchors, key.public_key)
        if key.revoked:
            raise ProofInvalid(f"the author's key {key.key_id} has been revoked: the signature proves nothing")
        return verified

    def list(
        self,
        patient_id: str,
        *,
        purpose: Purpose | None = None,
        categories: tuple[str, ...] = (),
        created_from: datetime | None = None,
        created_until: datetime | None = None,
        organization_id: str = "",
        page_size: int = 0,
    ) -> Iterator[records_pb2.Record]:
        """The latest version of each of the patient's records this identity may
        read, newest first, fetched page by page as the iterator advances."""
        request = records_pb2.ListPatientRecordsRequest(
            patient_id=patient_id, purpose=_purpose(purpose), organization_id=organization_id,
            categories=list(categories), page_size=page_size,
        )
        _set_times(request, created_from=created_from, created_until=created_until)
        for page in self._pages("records ListPatientRecords", self._stub.ListPatientRecords, request):
            yield from page.records

    def history(
        self, record_id: str, *, purpose: Purpose | None = None, organization_id: str = ""
    ) -> Iterator[records_pb2.Record]:
        """Every version of a record, oldest first."""
        request = records_pb2.GetRecordHistoryRequest(
            record_id=record_id, purpose=_purpose(purpose), organization_id=organization_id
        )
        for page in self._pages("records GetRecordHistory", self._stub.GetRecordHistory, request):
            yield from page.versions

    def export(
        self, patient_id: str | None = None, *, purpose: Purpose | None = None, organization_id: str = ""
    ) -> Export:
        """Everything this identity may read about the patient (a patient's own
        by default) as a FHIR Bundle of type collection."""
        request = records_pb2.ExportPatientRecordsRequest(
            patient_id=patient_id or self._session.identity_id, purpose=_purpose(purpose), organization_id=organization_id
        )
        reply = self._session.call("records ExportPatientRecords", AUDIENCE, self._stub.ExportPatientRecords, request)
        return Export(json.loads(reply.bundle_json), reply.record_count, tuple(reply.disclosure_event_ids))

    def disclosures(
        self, patient_id: str | None = None, *, since: datetime | None = None, until: datetime | None = None,
        page_size: int = 0,
    ) -> Iterator[records_pb2.DisclosureEntry]:
        """The patient's accounting of disclosures and access report (this
        identity's own by default; a representative or an auditor names the
        patient), oldest first, fetched page by page as the iterator advances.
        Each entry carries its signed event and, once sequenced, its ledger
        index, so any line can be proven."""
        request = records_pb2.ListDisclosuresRequest(patient_id=patient_id or self._session.identity_id,
                                                     page_size=page_size)
        _set_times(request, since=since, until=until)
        for page in self._pages("records ListDisclosures", self._stub.ListDisclosures, request):
            yield from page.entries

    def _pages(self, what: str, method: Callable[..., Page], request: Paged) -> Iterator[Page]:
        """Every page of a paged read, asking for the next as the caller iterates."""
        while True:
            page = self._session.call(what, AUDIENCE, method, request)
            yield page
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    # ---- erasure ---------------------------------------------------------------

    def erase(self, patient_id: str | None = None, *, erasure_id: str | None = None) -> records_pb2.ErasePatientDataResponse:
        """Erase a patient's data (this identity's own by default; a
        representative names the patient), signed with this identity's key.
        Irreversible: every payload and salt becomes unrecoverable."""
        request = records_pb2.ErasureRequest(
            erasure_id=erasure_id or str(uuid.uuid4()), patient_id=patient_id or self._session.identity_id,
            signer_id=self._session.identity_id, signer_key_id=self._session.key_id,
            signed_at=timestamp(datetime.now(timezone.utc)),
        )
        signed = records_pb2.ErasePatientDataRequest(request=canonical(request), signature=self._session.sign(erasure_message(request)))
        return self._session.call("records ErasePatientData", AUDIENCE, self._stub.ErasePatientData, signed)

    # ---- research artifacts -------------------------------------------------------

    def register_research_artifact(
        self, trial_id: str, kind: ArtifactKind, document: bytes, *, organization_id: str = ""
    ) -> records_pb2.ResearchArtifact:
        """Register the SHA-256 of a trial document (the document never leaves
        this process) for a RESEARCH organization."""
        request = records_pb2.RegisterResearchArtifactRequest(
            trial_id=trial_id, kind=cast("records_pb2.ResearchArtifactKind.ValueType", int(kind)),
            sha256=hashlib.sha256(document).digest(), organization_id=organization_id,
        )
        return self._session.call("records RegisterResearchArtifact", AUDIENCE, self._stub.RegisterResearchArtifact, request)

    def verify_research_artifact(self, document: bytes) -> records_pb2.VerifyResearchArtifactResponse:
        """Every registration of this document's hash, with ledger proofs
        (check each with ``medledger.client.proofs.verify_proof``)."""
        request = records_pb2.VerifyResearchArtifactRequest(sha256=hashlib.sha256(document).digest())
        return self._session.call("records VerifyResearchArtifact", AUDIENCE, self._stub.VerifyResearchArtifact, request)

    def trial_artifacts(self, trial_id: str) -> records_pb2.ListTrialArtifactsResponse:
        """A trial's registrations in order, flagging results or analysis plans
        registered before the protocol."""
        request = records_pb2.ListTrialArtifactsRequest(trial_id=trial_id)
        return self._session.call("records ListTrialArtifacts", AUDIENCE, self._stub.ListTrialArtifacts, request)


def _set_times(request: Paged, **times: datetime | None) -> None:
    """Set the optional Timestamp fields of a paged request that were given."""
    for name, at in times.items():
        if at is not None:
            getattr(request, name).CopyFrom(timestamp(at))
