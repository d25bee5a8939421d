"""What the client signs with a practitioner's or patient's key: record
versions (attestation naming the commitment of the canonical resource),
erasure requests and consent terms — each exactly in the form the services
verify, with its own domain prefix, so no signature can pass for another.

The services are stand-ins that capture the requests; the signatures are
checked here with the public key alone, as the services and auditors do."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medledger.client import ConsentClient, Purpose, RecordsClient, Session
from medledger.client.attestation import attestation_message, canonical_json, erasure_message
from medledger.client.session import Audience
from medledger.consent.signing import parse_canonical, signature_valid
from medledger.identity.domain import key_id_for
from medledger.v1 import consent_pb2, records_pb2

DOCTOR = "0190d6a4-0000-7000-8000-0000000000d0"
PATIENT = "0190d6a4-0000-7000-8000-0000000000aa"


class Captured:
    """A stub whose every rpc records its request and answers ``reply``."""

    def __init__(self, reply: Any = None) -> None:
        self.requests: dict[str, Any] = {}
        self.reply = reply

    def __getattr__(self, rpc: str) -> Any:
        def invoke(request: Any, metadata: tuple[tuple[str, str], ...], timeout: float) -> Any:
            self.requests[rpc] = request
            return self.reply
        return invoke


class TokenlessSession(Session):
    """A session whose tokens need no identity service."""

    def token(self, audience: Audience) -> str:
        return f"token-for-{audience}"


def client_for(identity_id: str, key: Ed25519PrivateKey) -> tuple[RecordsClient, Captured]:
    stub = Captured(records_pb2.RecordReceipt())
    return RecordsClient(TokenlessSession(None, identity_id, key), stub, None), stub  # type: ignore[arg-type]


def observation(value: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation", "status": "final", "code": {"text": "heart rate"},
        "subject": {"reference": f"Patient/{PATIENT}"}, "valueQuantity": {"unit": "beats/min", "value": value},
    }


def test_canonical_json_is_rfc_8785() -> None:
    # RFC 8785: keys sorted by UTF-16 code units, no whitespace, ES6 numbers
    assert canonical_json('{"b": 1.0, "a": [1e2, "é"], "\\u20ac": 0}') == '{"a":[100,"é"],"b":1,"€":0}'.encode()


def test_a_record_version_is_signed_over_its_commitment() -> None:
    key = Ed25519PrivateKey.generate()
    records, stub = client_for(DOCTOR, key)
    records.create(PATIENT, observation(72.0), organization_id="org-a", record_id="rec-1")
    request: records_pb2.CreateRecordRequest = stub.requests["CreateRecord"]
    attestation = records_pb2.RecordAttestation.FromString(request.attestation)
    assert request.attestation == attestation.SerializeToString(deterministic=True)  # canonical, as the service requires
    assert request.resource_json == canonical_json(observation(72)).decode()
    assert len(request.salt) == 32
    assert attestation.commitment == hashlib.sha256(request.salt + request.resource_json.encode()).digest()
    assert (attestation.record_id, attestation.version, attestation.patient_id, attestation.organization_id) == (
        "rec-1", 1, PATIENT, "org-a")
    assert (attestation.author_id, attestation.author_key_id, attestation.category) == (
        DOCTOR, key_id_for(key.public_key().public_bytes_raw()), "Observation")
    assert attestation.previous_commitment == b"" and attestation.HasField("signed_at")
    key.public_key().verify(request.author_signature, b"medledger.v1.RecordAttestation\n" + request.attestation)


def test_each_version_has_a_fresh_salt_and_an_amendment_links_to_the_latest() -> None:
    key = Ed25519PrivateKey.generate()
    records, stub = client_for(DOCTOR, key)
    records.create(PATIENT, observation(72), organization_id="org-a", record_id="rec-1")
    first: records_pb2.CreateRecordRequest = stub.requests["CreateRecord"]
    first_attestation = records_pb2.RecordAttestation.FromString(first.attestation)
    latest = records_pb2.Record(
        record_id="rec-1", version=1, latest_version=1, patient_id=PATIENT, category="Observation",
        custodian_organization_id="org-a", commitment=first_attestation.commitment,
    )
    records.amend(latest, observation(72))  # the same content again
    amended: records_pb2.AmendRecordRequest = stub.requests["AmendRecord"]
    attestation = records_pb2.RecordAttestation.FromString(amended.attestation)
    assert amended.salt != first.salt and attestation.commitment != first_attestation.commitment
    assert (attestation.version, attestation.previous_commitment, attestation.organization_id) == (
        2, first_attestation.commitment, "org-a")
    key.public_key().verify(amended.author_signature, attestation_message(attestation))


def test_the_record_id_is_the_resources_own_id_when_it_has_one() -> None:
    records, stub = client_for(DOCTOR, Ed25519PrivateKey.generate())
    records.create(PATIENT, json.dumps(dict(observation(72), id="obs-7")), organization_id="org-a")
    attestation = records_pb2.RecordAttestation.FromString(stub.requests["CreateRecord"].attestation)
    assert attestation.record_id == "obs-7"


def test_an_erasure_request_is_signed_by_the_patient_with_its_own_prefix() -> None:
    key = Ed25519PrivateKey.generate()
    stub = Captured(records_pb2.ErasePatientDataResponse())
    records = RecordsClient(TokenlessSession(None, PATIENT, key), stub, None)  # type: ignore[arg-type]
    records.erase()
    signed: records_pb2.ErasePatientDataRequest = stub.requests["ErasePatientData"]
    request = records_pb2.ErasureRequest.FromString(signed.request)
    assert signed.request == request.SerializeToString(deterministic=True)
    assert (request.patient_id, request.signer_id) == (PATIENT, PATIENT) and request.erasure_id
    key.public_key().verify(signed.signature, b"medledger.v1.ErasureRequest\n" + signed.request)
    assert erasure_message(request) == b"medledger.v1.ErasureRequest\n" + signed.request
    with pytest.raises(InvalidSignature):  # not valid as a record attestation
        key.public_key().verify(signed.signature, b"medledger.v1.RecordAttestation\n" + signed.request)


def test_consent_terms_are_signed_as_the_consent_service_verifies_them() -> None:
    key = Ed25519PrivateKey.generate()
    stub = Captured(consent_pb2.Consent())
    consent = ConsentClient(TokenlessSession(None, PATIENT, key), stub)  # type: ignore[arg-type]
    consent.grant(consent.terms("hospital-b", [Purpose.TREATMENT], categories=["Observation"]))
    grant: consent_pb2.GrantConsentRequest = stub.requests["GrantConsent"]
    terms = parse_canonical(grant.terms)
    assert (terms.patient_id, terms.signer_id, terms.grantee_id) == (PATIENT, PATIENT, "hospital-b")
    assert list(terms.purposes) == [consent_pb2.PURPOSE_TREATMENT] and list(terms.scope.categories) == ["Observation"]
    assert terms.signer_key_id == key_id_for(key.public_key().public_bytes_raw())
    assert terms.valid_until.ToDatetime() > terms.valid_from.ToDatetime()
    assert signature_valid(key.public_key().public_bytes_raw(), grant.terms, grant.signature)
