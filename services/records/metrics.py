"""The records service's metrics (runtime/metrics.py has the shared ones,
gRPC calls and the two outbox relays among them): records written and served
by category, disclosures recorded, patients' data erased, and the calls it
makes to consent and the ledger as it sees them.

A category label is a FHIR resource type name (``Observation``), the set the
records service accepts, and anything else is counted as ``other``: which
patient, record or author never becomes a label.
"""

from __future__ import annotations

import functools

from fhir.resources.R4B import get_fhir_model_class
from prometheus_client import Counter, Histogram

from medledger.runtime.metrics import LATENCY_BUCKETS
from medledger.v1 import records_pb2 as pb

WRITTEN = Counter(
    "medledger_records_written", "Record versions stored, by rpc (CreateRecord, AmendRecord) and category.",
    ["operation", "category"],
)
SERVED = Counter(
    "medledger_records_served",
    "Record versions returned to readers, by rpc and category (ExportPatientRecords: category 'bundle').",
    ["operation", "category"],
)
DISCLOSURES = Counter(
    "medledger_records_disclosures", "RecordsDisclosed events recorded for reads, by rpc.", ["operation"]
)
ERASURES = Counter(
    "medledger_records_erasures", "ErasePatientData calls answered (a repeated request for a done erasure counts again)."
)
VERSIONS_ERASED = Counter("medledger_records_versions_erased", "Record versions made unreadable by erasures.")
# A read waits on two other services. Their own grpc_server_handling_seconds
# leaves out the transport and the wake-ups on both sides, which on the
# development machines cost more than the callee's work (docs/benchmarks.md,
# 2026-12-02 15:50 UTC): this is the same call timed where the read waits for it.
PEER_CALL_SECONDS = Histogram(
    "medledger_records_peer_call_seconds",
    "Calls to another service, from sending to the answer (or error), as the records service waits for them.",
    ["grpc_service", "grpc_method"], buckets=LATENCY_BUCKETS,
)


@functools.lru_cache(maxsize=256)
def category(name: str) -> str:
    """The FHIR resource type, or 'other' for anything that is not one."""
    try:
        get_fhir_model_class(name)
    except (ValueError, KeyError):
        return "other"
    return name


def written(operation: str, attestation: bytes) -> None:
    """A write succeeded; its category is in the attestation it was made with."""
    WRITTEN.labels(operation, category(pb.RecordAttestation.FromString(attestation).category)).inc()


def served(operation: str, records: list[pb.Record], disclosures: int) -> None:
    for record in records:
        SERVED.labels(operation, category(record.category)).inc()
    if disclosures:
        DISCLOSURES.labels(operation).inc(disclosures)


def exported(records: int, disclosures: int) -> None:
    SERVED.labels("ExportPatientRecords", "bundle").inc(records)
    if disclosures:
        DISCLOSURES.labels("ExportPatientRecords").inc(disclosures)


def erased(versions: int) -> None:
    ERASURES.inc()
    VERSIONS_ERASED.inc(versions)
