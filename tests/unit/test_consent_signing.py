"""Canonical encoding of consent terms, Ed25519 signatures over it, the
signer key rules, the FHIR R4 export, and the projection's freshness clock."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

import pytest
from aiokafka import TopicPartition
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fhir.resources.R4B.consent import Consent as FhirConsent

from medledger.consent import signing
from medledger.consent.fhir import export_consent, is_resource_type
from medledger.consent.projection import Projection
from medledger.consent.signing import SigningKey, parse_canonical, sign_terms, signature_valid, verify_consent_signature
from medledger.consent.stream import Freshness
from medledger.runtime.errors import InvalidArgument, PermissionDenied
from medledger.v1 import consent_pb2 as pb
from medledger.testing.consent import granted, revoked, terms

NOW = datetime.now(timezone.utc)


@pytest.fixture(autouse=True)
def _fresh_now() -> None:
    """NOW is each test's own moment: terms() defaults are relative to the real
    clock, and a long suite runs these tests minutes after import."""
    global NOW
    NOW = datetime.now(timezone.utc)


def raw(key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_canonical_encoding_round_trips_and_is_unique() -> None:
    t = terms("pat", "doc", purposes=[pb.PURPOSE_TREATMENT, pb.PURPOSE_PAYMENT], categories=["Observation"])
    encoded = signing.canonical_terms(t)
    assert parse_canonical(encoded) == t
    assert signing.canonical_terms(parse_canonical(encoded)) == encoded


@pytest.mark.parametrize("mangle", [
    lambda b: b + b"\xa0\x06\x01",  # unknown field 100
    lambda b: b"\x12\x03pat" + b,  # field 2 repeated out of order (last one wins on parse)
    lambda b: b"\xff\xff\xff",  # not protobuf
    lambda b: b"",
])
def test_non_canonical_terms_are_refused(mangle: object) -> None:
    encoded = signing.canonical_terms(terms("pat", "doc"))
    with pytest.raises(InvalidArgument):
        parse_canonical(mangle(encoded))  # type: ignore[operator]


def test_signature_covers_the_context_and_the_terms() -> None:
    key = Ed25519PrivateKey.generate()
    encoded, signature = sign_terms(key, terms("pat", "doc"))
    assert signature_valid(raw(key), encoded, signature)
    assert not signature_valid(raw(Ed25519PrivateKey.generate()), encoded, signature)
    assert not signature_valid(raw(key), encoded + b"\x00", signature)
    bare = key.sign(encoded)  # without the context string
    assert not signature_valid(raw(key), encoded, bare)
    assert not signature_valid(raw(key), encoded, signature[:10])


def test_the_signer_key_must_be_in_effect_and_never_revoked() -> None:
    key = Ed25519PrivateKey.generate()
    encoded, signature = sign_terms(key, terms("pat", "doc"))
    good = SigningKey("k1", raw(key), NOW - timedelta(days=1), None, None)
    verify_consent_signature(good, NOW, encoded, signature)
    rotated_out = SigningKey("k1", raw(key), NOW - timedelta(days=1), NOW + timedelta(hours=1), None)
    verify_consent_signature(rotated_out, NOW, encoded, signature)  # signed before the rotation
    for bad, message in [
        (SigningKey("k1", raw(key), NOW - timedelta(days=1), NOW - timedelta(hours=1), None), "not in effect"),
        (SigningKey("k1", raw(key), NOW + timedelta(hours=1), None, None), "not in effect"),
        (SigningKey("k1", raw(key), NOW - timedelta(days=1), None, NOW + timedelta(days=1)), "revoked"),
        (SigningKey("k1", raw(Ed25519PrivateKey.generate()), NOW - timedelta(days=1), None, None), "does not verify"),
    ]:
        with pytest.raises(PermissionDenied, match=message):
            verify_consent_signature(bad, NOW, encoded, signature)


def test_fhir_export_is_a_valid_r4_consent_with_provisions_purposes_and_period() -> None:
    t = terms(
        "pat", "org", purposes=[pb.PURPOSE_TREATMENT, pb.PURPOSE_RESEARCH],
        categories=["Observation", "Condition"], record_ids=["rec-1"],
    )
    view = Projection()
    view.apply(granted(t, signature=b"\x07" * 64, grantee_kind=pb.GRANTEE_KIND_ORGANIZATION))
    consent = view.consent(t.consent_id)
    assert consent is not None
    text = export_consent(consent, NOW)
    resource = FhirConsent.model_validate_json(text)
    assert resource.status == "active" and resource.patient is not None and resource.patient.reference == "Patient/pat"
    doc = json.loads(text)
    provision = doc["provision"]
    assert provision["type"] == "permit"
    assert [p["code"] for p in provision["purpose"]] == ["TREAT", "HRESCH"]
    assert {p["system"] for p in provision["purpose"]} == {"http://terminology.hl7.org/CodeSystem/v3-ActReason"}
    assert provision["actor"][0]["reference"]["reference"] == "Organization/org"
    assert [c["code"] for c in provision["class"]] == ["Condition", "Observation"]
    assert provision["data"][0]["reference"]["identifier"]["value"] == "rec-1"
    assert provision["period"]["start"] < provision["period"]["end"]
    assert base64.b64decode(doc["sourceAttachment"]["data"]) == consent.encoded_terms
    view.apply(revoked(t))
    revoked_consent = view.consent(t.consent_id)
    assert revoked_consent is not None
    assert FhirConsent.model_validate_json(export_consent(revoked_consent, NOW)).status == "inactive"


def test_categories_are_fhir_resource_types() -> None:
    assert is_resource_type("Observation") and is_resource_type("MedicationRequest")
    assert not is_resource_type("Coding") and not is_resource_type("Nonsense")


def test_freshness_is_the_last_probe_whose_log_end_was_applied() -> None:
    clock = [100.0]
    fresh = Freshness(lambda: clock[0])
    a, b = TopicPartition("consent", 0), TopicPartition("identity", 0)
    assert fresh.staleness() == float("inf")
    fresh.observed_end(99.0, {a: 5, b: 2})
    fresh.applied({a: 4, b: 2})
    assert fresh.staleness() == float("inf")
    fresh.observed_end(99.5, {a: 7, b: 2})
    fresh.applied({a: 5, b: 2})
    assert fresh.staleness() == pytest.approx(1.0)
    fresh.applied({a: 7, b: 3})
    assert fresh.staleness() == pytest.approx(0.5)
    clock[0] = 101.0
    assert fresh.staleness() == pytest.approx(1.5)  # ages without new probes
