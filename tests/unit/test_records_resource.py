"""FHIR validation, subject binding, canonical form and commitments of the
records service (medledger.records.resource): what a hospital system gets
back for bad input, and that no error echoes the resource's values."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
import rfc8785

from medledger.records import resource
from medledger.runtime.errors import InvalidArgument, ResourceExhausted
from medledger.testing.records import observation

PATIENT = "0190a1b2-0000-7000-8000-000000000001"
SECRET = "Wilhelmina Quackenbush"


def _doc(**fields: Any) -> dict[str, Any]:
    return observation(PATIENT, **fields)


def test_every_supported_type_validates_with_its_subject() -> None:
    minimal: dict[str, dict[str, Any]] = {
        "Observation": {"status": "final", "code": {"text": "x"}},
        "Condition": {},
        "DiagnosticReport": {"status": "final", "code": {"text": "x"}},
        "MedicationRequest": {"status": "active", "intent": "order", "medicationCodeableConcept": {"text": "x"}},
        "MedicationStatement": {"status": "active", "medicationCodeableConcept": {"text": "x"}},
        "Immunization": {"status": "completed", "vaccineCode": {"text": "x"}, "occurrenceDateTime": "2024-01-01"},
        "AllergyIntolerance": {},
        "Procedure": {"status": "completed"},
        "Encounter": {"status": "finished", "class": {"code": "AMB"}},
        "DocumentReference": {"status": "current", "content": [{"attachment": {"contentType": "text/plain",
                                                                              "data": base64.b64encode(b"hi").decode()}}]},
    }
    assert set(minimal) == set(resource.SUPPORTED_TYPES)
    for kind, fields in minimal.items():
        doc = {"resourceType": kind, resource.SUBJECT_ELEMENT[kind]: {"reference": f"Patient/{PATIENT}"}, **fields}
        parsed = resource.parse(json.dumps(doc))
        resource.require_identity(parsed, "rec-1", PATIENT, kind)
        assert parsed.resource_type == kind


def test_invalid_fhir_names_the_failing_element_and_never_its_value() -> None:
    with pytest.raises(InvalidArgument) as missing:
        resource.parse(json.dumps({"resourceType": "Observation", "code": {"text": SECRET}}))
    assert "Observation.status is required" in str(missing.value)
    with pytest.raises(InvalidArgument) as bad_value:
        resource.parse(json.dumps(_doc(effectiveDateTime=SECRET)))
    assert "Observation.effectiveDateTime has an invalid value" in str(bad_value.value)
    assert SECRET not in str(bad_value.value) and "Wilhelmina" not in str(missing.value)


def test_unknown_elements_and_unsupported_types_are_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"Observation\.valueQuantityy is not an element"):
        resource.parse(json.dumps(_doc(valueQuantityy={"value": 1})))
    with pytest.raises(InvalidArgument, match="resourceType must be one of"):
        resource.parse(json.dumps({"resourceType": "Patient", "name": [{"text": SECRET}]}))


def test_malformed_json_is_invalid_argument() -> None:
    for text in ("{", "[1, 2]", '{"resourceType": "Observation", "status": "final", "status": "final"}', '{"a": NaN}'):
        with pytest.raises(InvalidArgument):
            resource.parse(text)


def test_a_resource_over_4_mib_is_resource_exhausted() -> None:
    big = _doc(note=[{"text": "x" * (4 * 1024 * 1024)}])
    with pytest.raises(ResourceExhausted, match="4 MiB"):
        resource.parse(json.dumps(big))


def test_subject_must_be_the_attested_patient() -> None:
    other = resource.parse(json.dumps(observation("someone-else")))
    with pytest.raises(InvalidArgument, match="not the attested patient"):
        resource.require_identity(other, "rec-1", PATIENT, "Observation")
    no_subject = {k: v for k, v in _doc().items() if k != "subject"}
    with pytest.raises(InvalidArgument, match=r"Observation\.subject\.reference is required"):
        resource.require_identity(resource.parse(json.dumps(no_subject)), "rec-1", PATIENT, "Observation")
    with pytest.raises(InvalidArgument, match="not the attested category"):
        resource.require_identity(resource.parse(json.dumps(_doc())), "rec-1", PATIENT, "Condition")
    with pytest.raises(InvalidArgument, match="record id"):
        resource.require_identity(resource.parse(json.dumps(_doc(id="another"))), "rec-1", PATIENT, "Observation")


def test_document_attachments_must_be_inline() -> None:
    doc = {"resourceType": "DocumentReference", "status": "current", "subject": {"reference": f"Patient/{PATIENT}"},
           "content": [{"attachment": {"url": "https://elsewhere.example/doc.pdf"}}]}
    with pytest.raises(InvalidArgument, match=r"content\[0\]\.attachment\.data is required"):
        resource.parse(json.dumps(doc))


def test_canonical_form_is_rfc8785_of_the_submitted_json_whatever_its_layout() -> None:
    compact = json.dumps(_doc(), separators=(",", ":"), sort_keys=False)
    spaced = json.dumps(dict(reversed(list(_doc().items()))), indent=4)
    a, b = resource.parse(compact), resource.parse(spaced)
    assert a.canonical == b.canonical == rfc8785.dumps(_doc())
    salt = bytes(range(32))
    assert resource.commitment(salt, a.canonical) == hashlib.sha256(salt + a.canonical).digest()
    assert resource.commitment(bytes(32), a.canonical) != resource.commitment(salt, a.canonical)
