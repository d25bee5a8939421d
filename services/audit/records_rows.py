"""What records.events say the records database holds, with no I/O: the
metadata of every record and version, research registration and erasure,
as rows keyed like the live tables (docs/architecture.md, Decisions:
"Replay compares the records service too").

Payloads are sealed in the database and never on an event, and the wrapped
data keys and learned ledger indices are not on records.events either, so
those columns are not derived; everything else a RecordCreated,
RecordAmended, ResearchArtifactRegistered or PatientDataErased states is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from medledger.runtime.signed import canonical
from medledger.runtime.times import utc
from medledger.v1 import events_pb2, records_pb2 as pb

Row = dict[str, Any]
VERSION_COLUMNS = ("author_id", "attestation", "author_signature", "commitment", "recorded_at", "event_id")
RECORD_COLUMNS = ("patient_id", "category", "custodian_id", "latest_version", "created_at")
ARTIFACT_COLUMNS = ("trial_id", "kind", "sha256", "organization_id", "registered_by", "registered_at", "event_id")
ERASURE_COLUMNS = ("erased_at", "erasure_id", "erasure_event_id", "versions_erased")

_CREATED = pb.RecordCreated.DESCRIPTOR.full_name
_AMENDED = pb.RecordAmended.DESCRIPTOR.full_name
_ARTIFACT = pb.ResearchArtifactRegistered.DESCRIPTOR.full_name
_ERASED = pb.PatientDataErased.DESCRIPTOR.full_name


@dataclass
class RecordsRows:
    """Rows of records, record_versions, research_artifacts and (erased)
    patient_keys, as the events state them."""

    records: dict[str, Row] = field(default_factory=dict)
    versions: dict[tuple[str, int], Row] = field(default_factory=dict)
    artifacts: dict[str, Row] = field(default_factory=dict)
    erasures: dict[str, Row] = field(default_factory=dict)

    def apply(self, envelopes: Iterable[events_pb2.EventEnvelope]) -> None:
        """Fold verified records.events envelopes in (any order within a
        patient's partition; idempotent)."""
        for env in envelopes:
            if env.event_type in (_CREATED, _AMENDED):
                self._version(env)
            elif env.event_type == _ARTIFACT:
                a = _unpack(env, pb.ResearchArtifactRegistered())
                self.artifacts[a.artifact_id] = {
                    "artifact_id": a.artifact_id, "trial_id": a.trial_id, "kind": a.kind, "sha256": a.sha256,
                    "organization_id": a.organization_id, "registered_by": a.registered_by,
                    "registered_at": utc(env.occurred_at), "event_id": env.event_id,
                }
            elif env.event_type == _ERASED:
                e = _unpack(env, pb.PatientDataErased())
                self.erasures.setdefault(e.request.patient_id, {
                    "patient_id": e.request.patient_id, "erased_at": utc(env.occurred_at),
                    "erasure_id": e.request.erasure_id, "erasure_event_id": env.event_id,
                    "versions_erased": e.versions_erased,
                })

    def _version(self, env: events_pb2.EventEnvelope) -> None:
        event = _unpack(env, pb.RecordCreated() if env.event_type == _CREATED else pb.RecordAmended())
        att = event.attestation
        at = utc(env.occurred_at)
        self.versions[(att.record_id, att.version)] = {
            "record_id": att.record_id, "version": att.version, "author_id": att.author_id,
            "attestation": canonical(att), "author_signature": event.author_signature, "commitment": att.commitment,
            "recorded_at": at, "event_id": env.event_id,
        }
        head = self.records.get(att.record_id)
        if env.event_type == _CREATED:
            latest = max(head["latest_version"], 1) if head else 1
            self.records[att.record_id] = {
                "record_id": att.record_id, "patient_id": att.patient_id, "category": att.category,
                "custodian_id": att.organization_id, "latest_version": latest, "created_at": at,
            }
        elif head is not None:
            head["latest_version"] = max(head["latest_version"], att.version)
        else:  # an amendment read before its creation (another partition cannot hold it; defensive)
            self.records[att.record_id] = {"record_id": att.record_id, "patient_id": att.patient_id,
                                           "category": att.category, "custodian_id": att.organization_id,
                                           "latest_version": att.version, "created_at": None}


def _unpack(env: events_pb2.EventEnvelope, message: Any) -> Any:
    env.payload.Unpack(message)
    return message
