"""Checks on what callers send that need no state: the signed consent terms
(ids, purposes, scope, window, signing time) and break-glass justifications.
Pure; each failure is an InvalidArgument naming the first problem."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Callable

from medledger.consent.domain import GRANTABLE_PURPOSES, utc
from medledger.runtime.errors import InvalidArgument
from medledger.v1 import consent_pb2 as pb

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
CATEGORY_PATTERN = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
MAX_SCOPE_ENTRIES = 1000
MIN_JUSTIFICATION_CHARS = 10
MAX_JUSTIFICATION_CHARS = 2000


def _require_id(value: str, name: str) -> None:
    if not value:
        raise InvalidArgument(f"{name} is required")
    if not ID_PATTERN.match(value):
        raise InvalidArgument(f"{name} must be 1-128 letters, digits, '.', '_', ':' or '-'")


def _validate_scope(scope: pb.ConsentScope, known_category: Callable[[str], bool]) -> None:
    listed = len(scope.categories) + len(scope.record_ids)
    if scope.all_records and listed:
        raise InvalidArgument("scope: all_records excludes listing categories or record ids")
    if not scope.all_records and not listed:
        raise InvalidArgument("scope is empty: set all_records or list categories or record ids")
    if listed > MAX_SCOPE_ENTRIES:
        raise InvalidArgument(f"scope lists more than {MAX_SCOPE_ENTRIES} entries")
    for category in scope.categories:
        if not CATEGORY_PATTERN.match(category) or not known_category(category):
            raise InvalidArgument(f"scope category {category!r} is not a FHIR R4 resource type")
    for record_id in scope.record_ids:
        _require_id(record_id, "scope record id")
    if len(set(scope.categories)) != len(scope.categories) or len(set(scope.record_ids)) != len(scope.record_ids):
        raise InvalidArgument("scope lists a category or record id twice")


def validate_terms(
    terms: pb.ConsentTerms, now: datetime, skew: timedelta, known_category: Callable[[str], bool]
) -> None:
    """Everything about the terms that needs no one else's data; InvalidArgument
    naming the first problem."""
    for name in ("consent_id", "patient_id", "grantee_id", "signer_id", "signer_key_id"):
        _require_id(getattr(terms, name), name)
    if terms.grantee_id == terms.patient_id:
        raise InvalidArgument("a patient cannot be the grantee of their own consent")
    if not terms.purposes:
        raise InvalidArgument("purposes is empty: name at least one of TREATMENT, PAYMENT, OPERATIONS, RESEARCH")
    for purpose in terms.purposes:
        if purpose not in GRANTABLE_PURPOSES:
            name = pb.Purpose.Name(purpose) if purpose in pb.Purpose.values() else str(purpose)
            raise InvalidArgument(f"purpose {name} cannot be granted by a consent (EMERGENCY is break-glass)")
    if len(set(terms.purposes)) != len(terms.purposes):
        raise InvalidArgument("purposes lists a purpose twice")
    _validate_scope(terms.scope, known_category)
    for name in ("valid_from", "valid_until", "signed_at"):
        if not terms.HasField(name):
            raise InvalidArgument(f"{name} is required")
    valid_from, valid_until = utc(terms.valid_from), utc(terms.valid_until)
    if valid_until <= valid_from:
        raise InvalidArgument(f"the window ends ({valid_until.isoformat()}) before it starts ({valid_from.isoformat()})")
    if valid_until <= now:
        raise InvalidArgument(f"the window already ended at {valid_until.isoformat()}")
    if utc(terms.signed_at) > now + skew:
        raise InvalidArgument("signed_at is in the future")


def validate_justification(text: str) -> str:
    stripped = text.strip()
    if len(stripped) < MIN_JUSTIFICATION_CHARS:
        raise InvalidArgument(f"a break-glass justification of at least {MIN_JUSTIFICATION_CHARS} characters is required")
    if len(stripped) > MAX_JUSTIFICATION_CHARS:
        raise InvalidArgument(f"the justification exceeds {MAX_JUSTIFICATION_CHARS} characters")
    return stripped
