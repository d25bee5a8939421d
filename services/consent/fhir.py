"""Export a consent as a FHIR R4 ``Consent`` resource, and the FHIR resource
type names consent scopes use as categories.

Validated with fhir.resources' R4B models: R4B's Consent is R4's (the
redesign came in R5), so the JSON is a valid R4 Consent. The mapping:

- status: ``active`` while granted and not revoked or expired, else ``inactive``;
- scope ``patient-privacy``, category LOINC 59284-0 (patient consent),
  policyRule ``OPTIN`` (the patient opts in to the sharing described);
- patient, dateTime (when recorded), performer (the signer, Patient or
  RelatedPerson for a legal representative), verification (signature checked);
- sourceAttachment: the signed canonical ConsentTerms (base64), and the
  Ed25519 signature in an extension, so the export is independently verifiable;
- provision ``permit`` with period (validity window), actor (the grantee as
  information recipient ``IRCP``), action ``access``, purpose (HL7 v3
  ActReason codes), class (FHIR resource types) and data (record ids).
"""

from __future__ import annotations

import base64
from datetime import datetime
from functools import lru_cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.consent import Consent as FhirConsentModel
from fhir.resources.R4B.resource import Resource

from medledger.consent.domain import PURPOSE_CODES, PURPOSE_NAMES, PURPOSE_SYSTEM, ConsentRecord
from medledger.v1 import consent_pb2 as pb

SIGNATURE_EXTENSION = "https://medledger.dev/fhir/StructureDefinition/consent-ed25519-signature"
RECORD_ID_SYSTEM = "urn:medledger:record-id"
CONSENT_ID_SYSTEM = "urn:medledger:consent-id"
TERMS_CONTENT_TYPE = "application/x-protobuf; messagetype=medledger.v1.ConsentTerms"


@lru_cache(maxsize=512)
def is_resource_type(name: str) -> bool:
    """Whether name is a FHIR resource type (not a data type), e.g. Observation."""
    try:
        return issubclass(get_fhir_model_class(name), Resource)
    except (ValueError, TypeError):
        return False


def _instant(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _coding(system: str, code: str, display: str = "") -> dict[str, str]:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return coding


def consent_resource(consent: ConsentRecord, now: datetime) -> dict[str, Any]:
    """The FHIR R4 Consent as a JSON-ready dict (not yet validated)."""
    terms = consent.terms()
    grantee_type = "Organization" if consent.grantee_kind == pb.GRANTEE_KIND_ORGANIZATION else "Practitioner"
    signer_type = "RelatedPerson" if consent.signer_role == pb.SIGNER_ROLE_REPRESENTATIVE else "Patient"
    status = "active" if consent.status(now) in (pb.CONSENT_STATUS_ACTIVE, pb.CONSENT_STATUS_PENDING) else "inactive"
    provision: dict[str, Any] = {
        "type": "permit",
        "period": {"start": _instant(consent.valid_from), "end": _instant(consent.valid_until)},
        "actor": [{
            "role": {"coding": [_coding("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "IRCP", "information recipient")]},
            "reference": {"reference": f"{grantee_type}/{consent.grantee_id}"},
        }],
        "action": [{"coding": [_coding("http://terminology.hl7.org/CodeSystem/consentaction", "access", "Access")]}],
        "purpose": [_coding(PURPOSE_SYSTEM, PURPOSE_CODES[p], PURPOSE_NAMES[p]) for p in sorted(consent.purposes)],
    }
    if consent.scope.categories:
        provision["class"] = [_coding("http://hl7.org/fhir/resource-types", c) for c in sorted(consent.scope.categories)]
    if consent.scope.record_ids:
        provision["data"] = [
            {"meaning": "instance", "reference": {"identifier": {"system": RECORD_ID_SYSTEM, "value": r}}}
            for r in sorted(consent.scope.record_ids)
        ]
    return {
        "resourceType": "Consent",
        "id": consent.consent_id,
        "identifier": [{"system": CONSENT_ID_SYSTEM, "value": consent.consent_id}],
        "status": status,
        "scope": {"coding": [_coding("http://terminology.hl7.org/CodeSystem/consentscope", "patient-privacy", "Privacy Consent")]},
        "category": [{"coding": [_coding("http://loinc.org", "59284-0", "Patient Consent")]}],
        "patient": {"reference": f"Patient/{consent.patient_id}"},
        "dateTime": _instant(consent.granted_at),
        "performer": [{"reference": f"{signer_type}/{terms.signer_id}"}],
        "policyRule": {"coding": [_coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", "OPTIN", "opt-in")]},
        "sourceAttachment": {
            "contentType": TERMS_CONTENT_TYPE,
            "data": base64.b64encode(consent.encoded_terms).decode(),
            "extension": [{"url": SIGNATURE_EXTENSION, "valueBase64Binary": base64.b64encode(consent.signature).decode()}],
        },
        "verification": [{
            "verified": True,
            "verifiedWith": {"reference": f"{signer_type}/{terms.signer_id}"},
            "verificationDate": _instant(consent.granted_at),
        }],
        "provision": provision,
    }


def export_consent(consent: ConsentRecord, now: datetime) -> str:
    """The validated FHIR R4 Consent JSON (application/fhir+json)."""
    model = FhirConsentModel.model_validate(consent_resource(consent, now))
    return str(model.model_dump_json(exclude_none=True))
