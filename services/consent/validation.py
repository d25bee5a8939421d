"""Checks on what callers send that need no state: the signed consent terms
(ids, purposes, scope, window, signing time), signed representative
appointments, access requests, break-glass justifications and review notes.
Pure; each failure is an InvalidArgument naming the first problem."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Literal

from google.protobuf.timestamp_pb2 import Timestamp

from medledger.consent.domain import GRANTABLE_PURPOSES, utc
from medledger.runtime.enums import enum_name
from medledger.runtime.errors import InvalidArgument
from medledger.v1 import consent_pb2 as pb

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
CATEGORY_PATTERN = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
MAX_SCOPE_ENTRIES = 1000
MIN_JUSTIFICATION_CHARS = 10
MAX_JUSTIFICATION_CHARS = 2000
# Timestamps every consent's terms must carry.
_REQUIRED_TIMES: tuple[Literal["valid_from", "valid_until", "signed_at"], ...] = (
    "valid_from", "valid_until", "signed_at",
)
MAX_NOTE_CHARS = 2000


@dataclass(frozen=True)
class SigningWindow:
    """How far signed_at may lie from the submission: ``skew`` ahead (clocks
    differ), ``max_age`` behind (a signature is submitted soon after it is made,
    so an old key cannot sign backdated statements)."""

    skew: timedelta
    max_age: timedelta

    def check(self, signed_at: Timestamp, now: datetime) -> None:
        at = utc(signed_at)
        if at > now + self.skew:
            raise InvalidArgument("signed_at is in the future")
        if at < now - self.max_age:
            raise InvalidArgument(
                f"signed_at is more than {int(self.max_age.total_seconds())} s old: sign again with your current key"
            )


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
        require_category(category, known_category, "scope category")
    for record_id in scope.record_ids:
        _require_id(record_id, "scope record id")
    if len(set(scope.categories)) != len(scope.categories) or len(set(scope.record_ids)) != len(scope.record_ids):
        raise InvalidArgument("scope lists a category or record id twice")


def require_category(category: str, known_category: Callable[[str], bool], name: str = "category") -> None:
    if not CATEGORY_PATTERN.match(category) or not known_category(category):
        raise InvalidArgument(f"{name} is not a FHIR R4 resource type (e.g. Observation)")  # not echoed: may be anything


def validate_access_request(
    patient_id: str, category: str, record_id: str, known_category: Callable[[str], bool]
) -> None:
    """CheckAccess's request: a well-formed patient id and a FHIR resource type
    or record id (or both), each bounded, so every AccessDecided is small."""
    _require_id(patient_id, "patient_id")
    if not category and not record_id:
        raise InvalidArgument("name the category or the record id asked for")
    if category:
        require_category(category, known_category)
    if record_id:
        _require_id(record_id, "record_id")


def validate_terms(
    terms: pb.ConsentTerms, now: datetime, window: SigningWindow, known_category: Callable[[str], bool]
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
            name = enum_name(pb.Purpose, purpose, str(purpose))
            raise InvalidArgument(f"purpose {name} cannot be granted by a consent (EMERGENCY is break-glass)")
    if len(set(terms.purposes)) != len(terms.purposes):
        raise InvalidArgument("purposes lists a purpose twice")
    _validate_scope(terms.scope, known_category)
    for name in _REQUIRED_TIMES:
        if not terms.HasField(name):
            raise InvalidArgument(f"{name} is required")
    valid_from, valid_until = utc(terms.valid_from), utc(terms.valid_until)
    if valid_until <= valid_from:
        raise InvalidArgument(f"the window ends ({valid_until.isoformat()}) before it starts ({valid_from.isoformat()})")
    if valid_until <= now:
        raise InvalidArgument(f"the window already ended at {valid_until.isoformat()}")
    window.check(terms.signed_at, now)


def validate_appointment(appointment: pb.RepresentativeAppointment, now: datetime, window: SigningWindow) -> None:
    """A patient's signed appointment of a representative, as far as it needs
    no one else's data."""
    for name in ("appointment_id", "patient_id", "representative_id", "signer_key_id"):
        _require_id(getattr(appointment, name), f"appointment.{name}")
    if not appointment.HasField("signed_at"):
        raise InvalidArgument("appointment.signed_at is required")
    window.check(appointment.signed_at, now)


def _free_text(text: str, name: str, least: int, most: int) -> str:
    stripped = text.strip()
    if len(stripped) < least:
        raise InvalidArgument(f"a {name} of at least {least} characters is required")
    if len(stripped) > most:
        raise InvalidArgument(f"the {name} exceeds {most} characters")
    return stripped


def validate_justification(text: str) -> str:
    return _free_text(text, "break-glass justification", MIN_JUSTIFICATION_CHARS, MAX_JUSTIFICATION_CHARS)


def validate_note(text: str) -> str:
    """A reviewer's note: required, bounded."""
    return _free_text(text, "review note", 1, MAX_NOTE_CHARS)
