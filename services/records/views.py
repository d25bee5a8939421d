"""Protobuf and FHIR views of stored records, research artifacts and
disclosures. Pure: no I/O."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Sequence

from medledger.records import domain
from medledger.records.crypto import Payload
from medledger.records.domain import Grounds, Reader, RecordHead
from medledger.records.store import StoredArtifact, StoredVersion
from medledger.v1 import records_pb2 as pb

MAX_RECORDS_PER_DISCLOSURE = 1000


def record_message(
    head: RecordHead, version: StoredVersion, payload: Payload | None, erased_at: datetime | None
) -> pb.Record:
    record = pb.Record(
        record_id=head.record_id,
        version=version.version,
        latest_version=head.latest_version,
        patient_id=head.patient_id,
        category=head.category,
        custodian_organization_id=head.custodian_id,
        author_id=version.author_id,
        attestation=pb.RecordAttestation.FromString(version.attestation),
        author_signature=version.author_signature,
        commitment=version.commitment,
        recorded_at=domain.timestamp(version.recorded_at),
        event_id=version.event_id,
    )
    if payload is not None:
        record.resource_json = payload.canonical.decode()
        record.salt = payload.salt
    if erased_at is not None:
        record.erased_at.CopyFrom(domain.timestamp(erased_at))
    if version.ledger_index is not None:
        record.ledger_index = version.ledger_index
    return record


def disclosures(
    disclosure_id: str, reader: Reader, patient_id: str, operation: str,
    served: Sequence[tuple[Grounds, RecordHead, StoredVersion]],
) -> list[pb.RecordsDisclosed]:
    """One RecordsDisclosed per grounds (and per 1000 records): ids, versions
    and commitments, never content."""
    by_grounds: dict[Grounds, list[tuple[RecordHead, StoredVersion]]] = {}
    for grounds, head, version in served:
        by_grounds.setdefault(grounds, []).append((head, version))
    events = []
    for grounds, items in by_grounds.items():
        for start in range(0, len(items), MAX_RECORDS_PER_DISCLOSURE):
            chunk = items[start:start + MAX_RECORDS_PER_DISCLOSURE]
            events.append(pb.RecordsDisclosed(
                disclosure_id=disclosure_id,
                requester_id=reader.identity_id,
                organization_id=domain.disclosed_organization(reader, grounds.basis, chunk[0][0].custodian_id),
                patient_id=patient_id,
                purpose=reader.purpose,
                basis=grounds.basis,
                consent_id=grounds.consent_id,
                break_glass_id=grounds.break_glass_id,
                access_decided_event_id=grounds.decision_event_id,
                operation=operation,
                records=[pb.DisclosedRecord(record_id=h.record_id, version=v.version, category=h.category,
                                            commitment=v.commitment) for h, v in chunk],
            ))
    return events


def bundle_json(bundle_id: str, at: datetime, entries: Sequence[tuple[RecordHead, StoredVersion, Payload]]) -> str:
    """A FHIR R4 Bundle of type collection around the stored canonical JSON
    (spliced in as is: each is already valid JSON)."""
    parts = [
        '{"fullUrl":' + json.dumps(f"urn:medledger:record:{h.record_id}:{v.version}")
        + ',"resource":' + p.canonical.decode() + "}"
        for h, v, p in entries
    ]
    head = {"resourceType": "Bundle", "id": bundle_id, "type": "collection",
            "timestamp": at.isoformat(timespec="milliseconds").replace("+00:00", "Z")}
    return json.dumps(head, separators=(",", ":"))[:-1] + ',"entry":[' + ",".join(parts) + "]}"


def artifact_message(a: StoredArtifact, before_protocol: bool, ledger_index: int | None = None) -> pb.ResearchArtifact:
    message = pb.ResearchArtifact(
        artifact_id=a.artifact_id, trial_id=a.trial_id, kind=a.kind, sha256=a.sha256,
        organization_id=a.organization_id, registered_by=a.registered_by,
        registered_at=domain.timestamp(a.registered_at), event_id=a.event_id, before_protocol=before_protocol,
    )
    if ledger_index is not None:
        message.ledger_index = ledger_index
    return message
