"""Builders for records tests and benchmarks: FHIR resources, signed
attestations and erasure requests, and the settings a records process needs
(its SERVICE identity and key-encryption key)."""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medledger.identity import keyfiles
from medledger.records.domain import ATTESTATION_PREFIX, ERASURE_PREFIX, timestamp
from medledger.records.resource import commitment
from medledger.runtime import signed
from medledger.testing.identity import IdentityHarness
from medledger.v1 import records_pb2 as pb

import rfc8785


def records_env(
    identity: IdentityHarness, directory: Path, env: Mapping[str, str] | None = None, **extra: str
) -> dict[str, str]:
    """Environment overrides for a records process: a SERVICE identity
    registered with the identity service (key in directory), a fresh
    key-encryption key and, given the stack's environment, where its consent
    and ledger services listen."""
    peers = {}
    if env is not None:
        peers = {f"MEDLEDGER_{name}_ADDRESS": f"127.0.0.1:{env[f'MEDLEDGER_{name}_PORT']}" for name in ("CONSENT", "LEDGER")}
    svc = identity.service()
    key_file = directory / f"records-{svc.identity_id}.key"
    if not key_file.exists():
        keyfiles.write_secret(key_file, keyfiles.private_key_pem(svc.private_key))
    kek_file = directory / "records-kek.key"
    if not kek_file.exists():
        keyfiles.write_secret(kek_file, keyfiles.new_data_key())
    return {
        "MEDLEDGER_RECORDS_IDENTITY_ID": svc.identity_id,
        "MEDLEDGER_RECORDS_KEY_FILE": str(key_file),
        "MEDLEDGER_RECORDS_KEK_FILE": str(kek_file),
        **peers,
        **extra,
    }


def observation(patient_id: str, marker: str = "", **fields: Any) -> dict[str, Any]:
    """A small valid Observation about the patient; marker goes into a note."""
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": "2025-01-02T10:00:00Z",
        "valueQuantity": {"value": 72, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"},
    }
    if marker:
        resource["note"] = [{"text": marker}]
    resource.update(fields)
    return resource


def attest(
    author_key: Ed25519PrivateKey,
    *,
    record_id: str,
    version: int,
    patient_id: str,
    organization_id: str,
    author_id: str,
    author_key_id: str,
    resource: dict[str, Any] | str,
    previous_commitment: bytes = b"",
    salt: bytes | None = None,
    signed_at: datetime | None = None,
) -> tuple[bytes, str, bytes, bytes]:
    """(attestation bytes, resource JSON, salt, signature) as a client sends them."""
    text = resource if isinstance(resource, str) else json.dumps(resource)
    salt = os.urandom(32) if salt is None else salt
    category = json.loads(text).get("resourceType", "") if text.strip().startswith("{") else ""
    att = pb.RecordAttestation(
        record_id=record_id, version=version, patient_id=patient_id, organization_id=organization_id,
        author_id=author_id, author_key_id=author_key_id, category=category,
        commitment=commitment(salt, rfc8785.dumps(json.loads(text))) if category else b"\0" * 32,
        previous_commitment=previous_commitment, signed_at=timestamp(signed_at or datetime.now(timezone.utc)),
    )
    encoded, signature = signed.sign(author_key, ATTESTATION_PREFIX, att)
    return encoded, text, salt, signature


def create_request(author_key: Ed25519PrivateKey, **kw: Any) -> pb.CreateRecordRequest:
    encoded, text, salt, signature = attest(author_key, version=1, **kw)
    return pb.CreateRecordRequest(attestation=encoded, resource_json=text, salt=salt, author_signature=signature)


def amend_request(author_key: Ed25519PrivateKey, **kw: Any) -> pb.AmendRecordRequest:
    encoded, text, salt, signature = attest(author_key, **kw)
    return pb.AmendRecordRequest(attestation=encoded, resource_json=text, salt=salt, author_signature=signature)


def erasure_request(
    signer_key: Ed25519PrivateKey, patient_id: str, signer_id: str, signer_key_id: str,
    signed_at: datetime | None = None, erasure_id: str | None = None,
) -> pb.ErasePatientDataRequest:
    request = pb.ErasureRequest(
        erasure_id=erasure_id or str(uuid.uuid4()), patient_id=patient_id, signer_id=signer_id,
        signer_key_id=signer_key_id, signed_at=timestamp(signed_at or datetime.now(timezone.utc)),
    )
    encoded, signature = signed.sign(signer_key, ERASURE_PREFIX, request)
    return pb.ErasePatientDataRequest(request=encoded, signature=signature)
