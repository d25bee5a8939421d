"""``medledger.client``: MedLedger for hospital systems and patient apps.

A synchronous, thread-safe library over the services' gRPC APIs, because
that is what an EHR integration engine, an interface script or a patient
app backend calls most easily; every call is one blocking rpc with a deadline.

    from medledger.client import Connection, Endpoints, Purpose, TrustAnchors, load_key

    anchors = TrustAnchors.from_files("ledger.pub", origin="medledger.example/ledger",
                                      producer_keys_file="event-producers.pub")
    with Connection(Endpoints.on_host("medledger.example")) as medledger:
        doctor = medledger.login(practitioner_id, load_key("doctor.key"))
        receipt = doctor.records.create(patient_id, observation, organization_id=hospital_id)
        reply = doctor.records.get(receipt.record_id, purpose=Purpose.TREATMENT)
        proved = doctor.records.verified(reply, anchors)   # offline proof + author signature

- ``Session`` obtains a token from the identity's Ed25519 key (challenge,
  signature, token) and renews it before it expires.
- ``ConsentClient`` builds and signs consent terms with the patient's key.
- ``RecordsClient`` signs each record version's commitment with the
  practitioner's key, signs erasure requests with the patient's key, reads
  with a purpose, and verifies proofs offline (``proofs.verify_record``).
- Failures are MedLedger errors (``medledger.runtime.errors``:
  PermissionDenied, NotFound, InvalidArgument, ..., DependencyUnavailable
  when a service is unreachable); proofs that do not check out raise
  ``ProofInvalid``, versions not sequenced yet ``ProofPending``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see; at run time __getattr__ below loads them
    from medledger.client.attestation import canonical_json
    from medledger.client.connection import Client, Connection, Endpoints
    from medledger.client.consent import ConsentClient, Purpose
    from medledger.client.identity import Demographics, IdentityClient, Registered
    from medledger.client.ledger import LedgerClient
    from medledger.client.proofs import ProofInvalid, ProofPending, TrustAnchors, VerifiedRecord, verify_proof, verify_record
    from medledger.client.records import ArtifactKind, Export, RecordsClient
    from medledger.client.rpc import status_code
    from medledger.client.session import Session, Signer, load_key, raw_public_key

# Names are imported on first use (PEP 562), so ``medledger.client.proofs`` and
# ``medledger.client.attestation`` load without gRPC: an offline verifier
# needs neither a network stack nor a service.
_EXPORTS = {
    "canonical_json": "attestation",
    "Client": "connection", "Connection": "connection", "Endpoints": "connection",
    "ConsentClient": "consent", "Purpose": "consent",
    "Demographics": "identity", "IdentityClient": "identity", "Registered": "identity",
    "LedgerClient": "ledger",
    "ProofInvalid": "proofs", "ProofPending": "proofs", "TrustAnchors": "proofs", "VerifiedRecord": "proofs",
    "verify_proof": "proofs", "verify_record": "proofs",
    "ArtifactKind": "records", "Export": "records", "RecordsClient": "records",
    "status_code": "rpc",
    "Session": "session", "Signer": "session", "load_key": "session", "raw_public_key": "session",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'medledger.client' has no attribute {name!r}")
    return getattr(importlib.import_module(f"medledger.client.{module}"), name)
