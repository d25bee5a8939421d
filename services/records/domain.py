"""The records service's rules, with no I/O: what a signed attestation or
erasure request must say, who may write for a patient, who may read a record
without asking consent, how versions follow each other, and the research
timeline, and which key a signer's statement is checked against. The adapters
gather the facts (projection, database, consent) and carry out what these
functions decide.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterable, Sequence, TypeAlias

from google.protobuf.timestamp_pb2 import Timestamp

from medledger.identity import domain as identity_domain
from medledger.identity.domain import Key
from medledger.records.resource import COMMITMENT_BYTES
from medledger.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from medledger.runtime.signed import SigningKey
from medledger.v1 import consent_pb2, records_pb2 as pb
from medledger.runtime.times import timestamp, utc  # noqa: F401 - part of this core's vocabulary

# A Purpose number, as consent.proto's fields carry it.
PurposeCode: TypeAlias = "consent_pb2.Purpose.ValueType"

ATTESTATION_PREFIX = b"medledger.v1.RecordAttestation\n"
ERASURE_PREFIX = b"medledger.v1.ErasureRequest\n"
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
TRIAL_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$")
ERASURE_MAX_AGE = timedelta(hours=24)
TREATMENT = consent_pb2.PURPOSE_TREATMENT
RESEARCH = consent_pb2.PURPOSE_RESEARCH
READER_KINDS = frozenset({"PATIENT", "PRACTITIONER"})
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def require_id(value: str, name: str) -> None:
    if not value:
        raise InvalidArgument(f"{name} is required")
    if not ID_PATTERN.match(value):
        raise InvalidArgument(f"{name} must be 1-128 letters, digits, '.', '_', ':' or '-'")


def _require_signed_at(ts: Timestamp, has: bool, now: datetime, skew: timedelta, max_age: timedelta) -> datetime:
    if not has:
        raise InvalidArgument("signed_at is required")
    signed_at = utc(ts)
    if signed_at > now + skew:
        raise InvalidArgument("signed_at is in the future")
    if signed_at < now - max_age:
        raise InvalidArgument(f"signed_at is more than {int(max_age.total_seconds())} s ago: sign again")
    return signed_at


# ---- signed statements ----------------------------------------------------------


def validate_attestation(att: pb.RecordAttestation, now: datetime, skew: timedelta, creating: bool) -> datetime:
    """Everything about an attestation that needs no state; its signed_at."""
    for name in ("record_id", "patient_id", "organization_id", "author_id", "author_key_id"):
        require_id(getattr(att, name), f"attestation.{name}")
    if not att.category:
        raise InvalidArgument("attestation.category is required")
    if len(att.commitment) != COMMITMENT_BYTES:
        raise InvalidArgument(f"attestation.commitment must be {COMMITMENT_BYTES} bytes (SHA-256)")
    if creating:
        if att.version != 1:
            raise InvalidArgument("attestation.version must be 1 for CreateRecord")
        if att.previous_commitment:
            raise InvalidArgument("attestation.previous_commitment must be empty for CreateRecord")
    else:
        if att.version < 2:
            raise InvalidArgument("attestation.version must be at least 2 for AmendRecord")
        if len(att.previous_commitment) != COMMITMENT_BYTES:
            raise InvalidArgument(f"attestation.previous_commitment must be {COMMITMENT_BYTES} bytes for AmendRecord")
    return _require_signed_at(att.signed_at, att.HasField("signed_at"), now, skew, skew)


def validate_erasure(request: pb.ErasureRequest, now: datetime, skew: timedelta) -> datetime:
    for name in ("erasure_id", "patient_id", "signer_id", "signer_key_id"):
        require_id(getattr(request, name), f"request.{name}")
    return _require_signed_at(request.signed_at, request.HasField("signed_at"), now, skew, ERASURE_MAX_AGE)


# ---- signers' keys ----------------------------------------------------------------


def resolve_key(identity_id: str, known: bool, history: Sequence[Key], key_id: str, at: datetime) -> SigningKey:
    """What identity's ResolveKey answers for (identity_id, key_id, at), from
    the keys records projects from identity.events (oldest first, in the
    shape of identity's own ``Key``): the key named key_id whatever its
    period, or without key_id the newest one in effect at ``at``; valid until
    it was replaced or revoked, whichever came first; revoked_at whenever it
    was revoked, even after ``at`` (verify_statement refuses it then: a
    stolen key could backdate). A revoked identity's keys stay as they were,
    as in ResolveKey (writes and erasures refuse an inactive signer on their
    own). NotFound, as ResolveKey, for an unknown identity or key."""
    if not known:
        raise NotFound(f"no identity {identity_id}")
    key = identity_domain.resolve_key(identity_id, history, key_id, at)
    return SigningKey(key.key_id, key.public_key, key.valid_from, key.valid_until, key.revoked_at)


# ---- facts the adapters gather ------------------------------------------------------


@dataclass(frozen=True)
class Party:
    """An identity as the projection of identity.events knows it."""

    identity_id: str
    kind: str
    active: bool
    registered_by: str = ""
    organization_type: str = ""
    organizations: frozenset[str] = frozenset()  # active memberships


@dataclass(frozen=True)
class ConsentFact:
    consent_id: str
    grantee_id: str
    purposes: frozenset[int]
    valid_from: datetime
    valid_until: datetime
    revoked: bool
    record_ids: frozenset[str] = frozenset()

    def active(self, now: datetime) -> bool:
        return not self.revoked and self.valid_from <= now < self.valid_until


@dataclass(frozen=True)
class BreakGlassFact:
    break_glass_id: str
    practitioner_id: str
    organization_id: str
    valid_until: datetime


@dataclass(frozen=True)
class PatientFacts:
    """What the projection knows about a patient, and whether they erased their data."""

    patient: Party | None
    representatives: frozenset[str] = frozenset()
    consents: tuple[ConsentFact, ...] = ()
    break_glass: tuple[BreakGlassFact, ...] = ()
    erased_at: datetime | None = None


@dataclass(frozen=True)
class WriteGrant:
    basis: pb.WriteBasis.ValueType
    consent_id: str = ""
    break_glass_id: str = ""


# ---- writes ---------------------------------------------------------------------


def require_patient(facts: PatientFacts, patient_id: str) -> Party:
    patient = facts.patient
    if patient is None or patient.kind != "PATIENT":
        raise NotFound(f"patient {patient_id} is not a registered patient")
    return patient


def authorize_write(
    author: Party | None, organization_id: str, patient_id: str, facts: PatientFacts, now: datetime
) -> WriteGrant:
    """Why the author may write for the organization about the patient
    (registering organization, TREATMENT consent, break-glass); PermissionDenied
    otherwise, FailedPrecondition once the patient erased their data."""
    patient = require_patient(facts, patient_id)
    if author is None or author.kind != "PRACTITIONER" or not author.active:
        raise PermissionDenied("only an active practitioner may write records")
    if organization_id not in author.organizations:
        raise PermissionDenied(f"the author has no active membership in organization {organization_id}")
    grant = _write_basis(author, organization_id, patient, facts, now)
    if grant is None:
        raise PermissionDenied(
            f"organization {organization_id} may not write for patient {patient.identity_id}: it did not register "
            "them, holds no TREATMENT consent from them and the author has no break-glass for them"
        )
    if facts.erased_at is not None:
        raise FailedPrecondition(f"patient {patient.identity_id} erased their data at {facts.erased_at.isoformat()}")
    return grant


def _write_basis(author: Party, organization_id: str, patient: Party, facts: PatientFacts, now: datetime) -> WriteGrant | None:
    if patient.registered_by == organization_id:
        return WriteGrant(pb.WRITE_BASIS_REGISTERING_ORGANIZATION)
    for consent in facts.consents:
        if consent.active(now) and TREATMENT in consent.purposes and consent.grantee_id in (organization_id, author.identity_id):
            return WriteGrant(pb.WRITE_BASIS_CONSENT, consent_id=consent.consent_id)
    for access in facts.break_glass:
        if access.practitioner_id == author.identity_id and access.organization_id == organization_id and now < access.valid_until:
            return WriteGrant(pb.WRITE_BASIS_BREAK_GLASS, break_glass_id=access.break_glass_id)
    return None


@dataclass(frozen=True)
class RecordHead:
    """A stored record's identity and its latest version."""

    record_id: str
    patient_id: str
    category: str
    custodian_id: str
    latest_version: int
    latest_commitment: bytes
    created_at: datetime


def check_amendment(att: pb.RecordAttestation, head: RecordHead) -> None:
    """An amendment keeps the record's patient, category and custodian and
    follows its latest version exactly."""
    if att.patient_id != head.patient_id:
        raise InvalidArgument("an amendment must keep the record's patient")
    if att.category != head.category:
        raise InvalidArgument(f"an amendment must keep the record's category {head.category}")
    if att.organization_id != head.custodian_id:
        raise PermissionDenied(f"only the custodian organization {head.custodian_id} amends record {head.record_id}")
    if att.version != head.latest_version + 1:
        raise FailedPrecondition(f"record {head.record_id} is at version {head.latest_version}: amend it as version {head.latest_version + 1}")
    if att.previous_commitment != head.latest_commitment:
        raise FailedPrecondition(f"previous_commitment is not the commitment of version {head.latest_version}")


# ---- reads ----------------------------------------------------------------------


@dataclass(frozen=True)
class Reader:
    """The caller of a read and what it said about itself."""

    identity_id: str
    kind: str
    purpose: PurposeCode
    organization_id: str  # as requested; may be empty
    organizations: frozenset[str]  # active memberships (projection)


def check_reader(reader: Reader) -> None:
    if reader.kind not in READER_KINDS:
        raise PermissionDenied("records are read by patients and practitioners only")
    if reader.kind == "PRACTITIONER" and reader.purpose == consent_pb2.PURPOSE_UNSPECIFIED:
        raise InvalidArgument("purpose is required: why the practitioner reads")
    if reader.purpose not in consent_pb2.Purpose.values():
        raise InvalidArgument("purpose is not a known Purpose")
    if reader.organization_id and reader.organization_id not in reader.organizations:
        raise PermissionDenied(f"the caller has no active membership in organization {reader.organization_id}")


def own_basis(
    reader: Reader, patient_id: str, representatives: frozenset[str], custodian_id: str
) -> pb.DisclosureBasis.ValueType | None:
    """The basis on which the reader may read without asking consent, or None.
    Purpose RESEARCH always needs a consent, even for the custodian."""
    if reader.identity_id == patient_id:
        return pb.DISCLOSURE_BASIS_PATIENT
    if reader.identity_id in representatives:
        return pb.DISCLOSURE_BASIS_REPRESENTATIVE
    if reader.kind == "PRACTITIONER" and custodian_id in reader.organizations and reader.purpose != RESEARCH:
        return pb.DISCLOSURE_BASIS_CUSTODIAN
    return None


def disclosed_organization(reader: Reader, basis: pb.DisclosureBasis.ValueType, custodian_id: str) -> str:
    """The organization a disclosure names: the one the reader named, else the
    custodian for a custodian read, else the reader's only membership."""
    if basis in (pb.DISCLOSURE_BASIS_PATIENT, pb.DISCLOSURE_BASIS_REPRESENTATIVE) and reader.kind == "PATIENT":
        return ""
    if reader.organization_id:
        return reader.organization_id
    if basis == pb.DISCLOSURE_BASIS_CUSTODIAN:
        return custodian_id
    return next(iter(reader.organizations)) if len(reader.organizations) == 1 else ""


def decision_basis(reason: consent_pb2.DecisionReason.ValueType) -> pb.DisclosureBasis.ValueType:
    """The disclosure basis of a consent service ALLOW."""
    return pb.DISCLOSURE_BASIS_BREAK_GLASS if reason == consent_pb2.REASON_BREAK_GLASS else pb.DISCLOSURE_BASIS_CONSENT


def record_scoped(consents: Iterable[ConsentFact], now: datetime) -> frozenset[str]:
    """Record ids some unrevoked, unexpired consent of the patient lists: only
    these can be allowed by record id when their category is not."""
    ids: set[str] = set()
    for consent in consents:
        if not consent.revoked and now < consent.valid_until:
            ids |= consent.record_ids
    return frozenset(ids)


@dataclass(frozen=True)
class Grounds:
    """Why one or more records were disclosed: one RecordsDisclosed event each."""

    basis: pb.DisclosureBasis.ValueType
    consent_id: str = ""
    break_glass_id: str = ""
    decision_event_id: str = ""


# ---- paging ---------------------------------------------------------------------


@dataclass(frozen=True)
class ListCursor:
    """Position after the last record served: (created_at, record_id), newest first."""

    created_at_us: int
    record_id: str

    @property
    def created_at(self) -> datetime:
        return EPOCH + timedelta(microseconds=self.created_at_us)


def encode_cursor(cursor: ListCursor) -> str:
    raw = json.dumps({"c": cursor.created_at_us, "r": cursor.record_id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str) -> ListCursor | None:
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        cursor = ListCursor(int(data["c"]), str(data["r"]))
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise InvalidArgument("page_token is malformed: pass next_page_token unchanged") from None
    require_id(cursor.record_id, "page_token")
    return cursor


def decode_version_token(token: str) -> int:
    """History pages: the token is the next version to return."""
    if not token:
        return 1
    if not token.isdigit() or not 1 <= int(token) < 2**31:
        raise InvalidArgument("page_token is malformed: pass next_page_token unchanged")
    return int(token)


def page_size(requested: int, default: int, cap: int) -> int:
    return min(requested or default, cap)


# ---- research ------------------------------------------------------------------

ARTIFACT_KINDS = frozenset(
    {pb.ARTIFACT_PROTOCOL, pb.ARTIFACT_ANALYSIS_PLAN, pb.ARTIFACT_AMENDMENT, pb.ARTIFACT_DATASET, pb.ARTIFACT_RESULTS}
)
NEEDS_PROTOCOL_FIRST = frozenset({pb.ARTIFACT_ANALYSIS_PLAN, pb.ARTIFACT_RESULTS})
MAX_TRIAL_ARTIFACTS = 1000


def validate_artifact(trial_id: str, kind: pb.ResearchArtifactKind.ValueType, sha256: bytes) -> None:
    if not trial_id:
        raise InvalidArgument("trial_id is required")
    if not TRIAL_ID_PATTERN.match(trial_id):
        raise InvalidArgument("trial_id must be 1-64 letters, digits, '.', '_', ':', '/' or '-'")
    if kind not in ARTIFACT_KINDS:
        raise InvalidArgument("kind is required: PROTOCOL, ANALYSIS_PLAN, AMENDMENT, DATASET or RESULTS")
    require_sha256(sha256)


def require_sha256(sha256: bytes) -> None:
    if len(sha256) != 32:
        raise InvalidArgument("sha256 must be the 32-byte SHA-256 of the document")


def research_organization(caller_id: str, caller_kind: str, requested: str, organization: Party | None, member_of: frozenset[str]) -> str:
    """The RESEARCH organization a registration is for; PermissionDenied unless
    the caller is it or an active member of it."""
    organization_id = requested or (caller_id if caller_kind == "ORGANIZATION" else "")
    if not organization_id:
        raise InvalidArgument("organization_id is required for a practitioner")
    if caller_kind == "ORGANIZATION" and organization_id != caller_id:
        raise PermissionDenied("an organization registers artifacts only for itself")
    if caller_kind == "PRACTITIONER" and organization_id not in member_of:
        raise PermissionDenied(f"the caller has no active membership in organization {organization_id}")
    if caller_kind not in ("ORGANIZATION", "PRACTITIONER"):
        raise PermissionDenied("research artifacts are registered by RESEARCH organizations and their members")
    if organization is None or organization.kind != "ORGANIZATION" or not organization.active or organization.organization_type != "RESEARCH":
        raise PermissionDenied(f"{organization_id} is not an active RESEARCH organization")
    return organization_id


@dataclass(frozen=True)
class ArtifactEntry:
    kind: pb.ResearchArtifactKind.ValueType
    registered_at: datetime
    artifact_id: str = field(default="")


def before_protocol(entries: Sequence[ArtifactEntry]) -> list[bool]:
    """Per entry (in registration order): an analysis plan or results
    registered before the trial's first protocol (or with none yet)."""
    first_protocol = next((e.registered_at for e in entries if e.kind == pb.ARTIFACT_PROTOCOL), None)
    return [
        e.kind in NEEDS_PROTOCOL_FIRST and (first_protocol is None or e.registered_at < first_protocol)
        for e in entries
    ]
