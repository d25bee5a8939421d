"""The statements a client signs for the records service, exactly as
records.proto defines them and the service checks them (the prefixes,
canonical encoding and commitment are the records service's own,
``medledger.records.domain``, ``medledger.records.resource`` and
``medledger.runtime.signed``). Pure: no I/O.

- A record version: the author signs a ``RecordAttestation`` naming the
  commitment ``SHA-256(salt || RFC 8785 canonical JSON of the resource)``;
  signed bytes ``"medledger.v1.RecordAttestation\\n" || canonical attestation``.
- An erasure: the patient (or a representative) signs an ``ErasureRequest``;
  signed bytes ``"medledger.v1.ErasureRequest\\n" || canonical request``.

Canonical means protobuf's deterministic serialization without unknown
fields, the only encoding the service accepts. Each prefix keeps one use of a
key apart from every other (consent terms, identity challenges), so a
signature made for one can never be replayed as another.
"""

from __future__ import annotations

import json
import secrets
from typing import Any, Mapping

import rfc8785

from medledger.records.domain import ATTESTATION_PREFIX, ERASURE_PREFIX
from medledger.records.resource import SALT_BYTES, commitment
from medledger.runtime.signed import canonical
from medledger.v1 import records_pb2

__all__ = ["attestation_message", "canonical", "canonical_json", "commitment", "erasure_message", "new_salt"]


def attestation_message(attestation: records_pb2.RecordAttestation) -> bytes:
    """The exact bytes an author's signature covers."""
    return ATTESTATION_PREFIX + canonical(attestation)


def erasure_message(request: records_pb2.ErasureRequest) -> bytes:
    """The exact bytes an erasure signature covers."""
    return ERASURE_PREFIX + canonical(request)


def canonical_json(resource: Mapping[str, Any] | str | bytes) -> bytes:
    """RFC 8785 canonical JSON of a FHIR resource (given parsed or as JSON text)."""
    parsed = json.loads(resource) if isinstance(resource, (str, bytes)) else resource
    return rfc8785.dumps(parsed)


def new_salt() -> bytes:
    """A fresh random salt: one per version, never reused."""
    return secrets.token_bytes(SALT_BYTES)
