"""FHIR resources as the records service accepts them: validated, tied to one
patient, canonicalized and committed to. Pure: no I/O.

Validation uses fhir.resources' R4B models, the closest it ships to R4 for
the resource types stored here (their R4B shapes are R4's). The models check
structure, cardinality and data types, not terminology bindings.

Canonical form: RFC 8785 JSON Canonicalization of the resource exactly as
submitted (parsed, duplicate keys refused), so any client can recompute it
without a FHIR library. Commitment: SHA-256(salt || canonical JSON) with a
random 32-byte salt per version; once the salt is destroyed (erasure) the
commitment on the ledger cannot be linked to any content.

Errors never carry values from the resource: an element path and what is
wrong with it, no more (the values may be PHI).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import pydantic
import rfc8785
from fhir.resources.R4B import get_fhir_model_class

from medledger.runtime.errors import InvalidArgument, ResourceExhausted

MAX_RESOURCE_BYTES = 4 * 1024 * 1024
SALT_BYTES = 32
COMMITMENT_BYTES = 32

# Resource type -> the element that names the patient.
SUBJECT_ELEMENT: dict[str, str] = {
    "Observation": "subject",
    "Condition": "subject",
    "DiagnosticReport": "subject",
    "MedicationRequest": "subject",
    "MedicationStatement": "subject",
    "Immunization": "patient",
    "AllergyIntolerance": "patient",
    "Procedure": "subject",
    "Encounter": "subject",
    "DocumentReference": "subject",
}
SUPPORTED_TYPES = tuple(SUBJECT_ELEMENT)
_ELEMENT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_PROBLEMS = {
    "missing": "is required",
    "model_field_validation.missing": "is required",
    "extra_forbidden": "is not an element of this resource",
}


@dataclass(frozen=True)
class Resource:
    """A validated resource: its type, the parsed document and its canonical bytes."""

    resource_type: str
    document: dict[str, Any]
    canonical: bytes


def commitment(salt: bytes, canonical: bytes) -> bytes:
    return hashlib.sha256(salt + canonical).digest()


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise InvalidArgument("resource_json has an object with a duplicate key")
    return dict(pairs)


def _refuse_constant(name: str) -> None:
    raise InvalidArgument(f"resource_json holds {name}, which JSON does not allow")


def _element(loc: tuple[Any, ...], resource_type: str) -> str:
    """A readable element path, e.g. Observation.component[0].code; names that
    are not element-like are not echoed."""
    path = resource_type
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "resource_type":
            path += ".resourceType"
        else:
            path += "." + (part if _ELEMENT_NAME.match(str(part)) else "<element>")
    return path


def _describe(error: pydantic.ValidationError, resource_type: str) -> str:
    problems = []
    for e in error.errors()[:3]:
        what = _PROBLEMS.get(e["type"], f"has an invalid value ({e['type']})")
        problems.append(f"{_element(tuple(e['loc']), resource_type)} {what}")
    more = len(error.errors()) - len(problems)
    return "; ".join(problems) + (f"; and {more} more" if more > 0 else "")


def parse(resource_json: str) -> Resource:
    """The validated resource; ResourceExhausted over 4 MiB, InvalidArgument
    naming the failing element otherwise."""
    if not resource_json:
        raise InvalidArgument("resource_json is required")
    if len(resource_json) > MAX_RESOURCE_BYTES or len(resource_json.encode()) > MAX_RESOURCE_BYTES:
        raise ResourceExhausted(f"resource_json exceeds {MAX_RESOURCE_BYTES} bytes (4 MiB)")
    try:
        document = json.loads(resource_json, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"resource_json is not JSON (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(document, dict):
        raise InvalidArgument("resource_json must be a JSON object (a FHIR resource)")
    resource_type = document.get("resourceType")
    if resource_type not in SUBJECT_ELEMENT:
        raise InvalidArgument(f"resourceType must be one of {', '.join(SUPPORTED_TYPES)}")
    try:
        get_fhir_model_class(resource_type).model_validate(document)
    except pydantic.ValidationError as exc:
        raise InvalidArgument(f"invalid FHIR {resource_type}: {_describe(exc, resource_type)}") from None
    except (ValueError, TypeError):
        raise InvalidArgument(f"invalid FHIR {resource_type}") from None
    if resource_type == "DocumentReference":
        _require_inline_attachments(document)
    try:
        canonical = rfc8785.dumps(document)
    except rfc8785.CanonicalizationError:
        raise InvalidArgument("resource_json cannot be canonicalized (RFC 8785): a number is out of range") from None
    return Resource(resource_type, document, canonical)


def _require_inline_attachments(document: dict[str, Any]) -> None:
    for i, content in enumerate(document.get("content") or []):
        attachment = content.get("attachment") or {}
        if "data" not in attachment:
            raise InvalidArgument(f"DocumentReference.content[{i}].attachment.data is required: attachments are stored inline (base64)")


def require_identity(resource: Resource, record_id: str, patient_id: str, category: str) -> None:
    """The resource is the attested one: same type, its id (if any) the record
    id, and its subject (or patient) exactly Patient/<patient_id>."""
    if resource.resource_type != category:
        raise InvalidArgument(f"resourceType {resource.resource_type} is not the attested category {category}")
    if "id" in resource.document and resource.document["id"] != record_id:
        raise InvalidArgument(f"{resource.resource_type}.id must be the record id {record_id} (or absent)")
    element = SUBJECT_ELEMENT[resource.resource_type]
    subject = resource.document.get(element)
    where = f"{resource.resource_type}.{element}"
    if not isinstance(subject, dict) or "reference" not in subject:
        raise InvalidArgument(f"{where}.reference is required: it must be Patient/{patient_id}")
    if subject["reference"] != f"Patient/{patient_id}":
        raise InvalidArgument(f"{where} is not the attested patient: it must reference Patient/{patient_id}")
