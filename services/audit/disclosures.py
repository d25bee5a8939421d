"""A patient's accounting of disclosures and access report from the ledger's
own entries, with no I/O (HIPAA §164.528; §164.312(b)).

- Disclosures: every RecordsDisclosed (the records service disclosed records:
  date, recipient, what, purpose).
- Access report: every AccessDecided, allowed or denied, every
  BreakGlassInvoked with its review (flagged for review until a
  BreakGlassReviewed on the log records the outcome, shown on the same line).

Each line keeps the ledger index of the entry it comes from, so any line can
be proven (``medledger audit prove``). Formats: a table, JSON, CSV, and a FHIR
R4 Bundle of AuditEvent resources following IHE Basic Audit Log Patterns
(AuthZconsent for decisions and break-glass, PatientRead for disclosures),
validated with fhir.resources' R4B models.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

from google.protobuf.message import DecodeError

from medledger.audit.envelopes import ACCESS_DECIDED, BREAK_GLASS_INVOKED, BREAK_GLASS_REVIEWED, RECORDS_DISCLOSED
from medledger.consent.domain import PURPOSE_CODES, PURPOSE_NAMES, PURPOSE_SYSTEM
from medledger.runtime.enums import enum_name
from medledger.v1 import consent_pb2, events_pb2, records_pb2

DISCLOSURE, DECISION, BREAK_GLASS, REVIEW = "disclosure", "access decision", "break-glass", "break-glass review"
FORMATS = ("table", "json", "csv", "fhir")
BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
AUTHZ_SUBTYPE = "https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType"
IDENTITY_SYSTEM = "urn:medledger:identity-id"
EVENT_SYSTEM = "urn:medledger:event-id"
LEDGER_INDEX_SYSTEM = "urn:medledger:ledger-index"


@dataclass(frozen=True)
class AccessLine:
    """One line of the report; ids, codes and times only (no PHI)."""

    index: int
    at: datetime
    kind: str
    recipient: str
    purpose: str
    what: str
    decision: str = ""
    reason: str = ""
    basis: str = ""  # the consent or break-glass it rests on
    organization: str = ""  # the organization the recipient acted for
    asked_by: str = ""
    event_id: str = ""
    review: str = ""

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["at"] = self.at.isoformat()
        return out


def _purpose(value: int) -> str:
    return PURPOSE_CODES.get(value, enum_name(consent_pb2.Purpose, value, str(value)))


def _what(category: str, record_ids: Iterable[str]) -> str:
    parts = ([category] if category else []) + [f"record {r}" for r in record_ids if r]
    return ", ".join(parts) or "-"


def _short_enum(name: str, prefix: str) -> str:
    return name[len(prefix):] if name.startswith(prefix) else name


def line_of(index: int, event: bytes) -> AccessLine | None:
    """The report line of one entry of the patient's index (None for other types)."""
    try:
        env = events_pb2.EventEnvelope.FromString(event)
    except DecodeError:
        return None
    at = env.occurred_at.ToDatetime(tzinfo=timezone.utc)
    if env.event_type == ACCESS_DECIDED:
        d = consent_pb2.AccessDecided.FromString(env.payload.value)
        return AccessLine(
            index, at, DECISION, d.requester_id, _purpose(d.purpose), _what(d.category, [d.record_id]),
            decision=_short_enum(consent_pb2.Decision.Name(d.decision), "DECISION_"),
            reason=_short_enum(consent_pb2.DecisionReason.Name(d.reason), "REASON_"),
            basis=d.break_glass_id or d.consent_id, asked_by=d.asked_by, event_id=env.event_id,
        )
    if env.event_type == BREAK_GLASS_INVOKED:
        b = consent_pb2.BreakGlassInvoked.FromString(env.payload.value)
        review = "review required, none recorded on the log" if b.review_required else ""
        return AccessLine(
            index, at, BREAK_GLASS, b.practitioner_id, _purpose(consent_pb2.PURPOSE_EMERGENCY), "all records",
            basis=b.break_glass_id, organization=b.organization_id, asked_by=env.actor, event_id=env.event_id,
            review=review,
        )
    if env.event_type == RECORDS_DISCLOSED:
        r = records_pb2.RecordsDisclosed.FromString(env.payload.value)
        what = ", ".join(f"{x.category} {x.record_id} v{x.version}" for x in r.records) or "-"
        basis = _short_enum(records_pb2.DisclosureBasis.Name(r.basis), "DISCLOSURE_BASIS_")
        on = r.consent_id or r.break_glass_id
        return AccessLine(
            index, at, DISCLOSURE, r.requester_id, _purpose(r.purpose) if r.purpose else "-", what,
            basis=f"{basis} {on}".strip(), organization=r.organization_id, asked_by=r.operation,
            event_id=env.event_id,
        )
    if env.event_type == BREAK_GLASS_REVIEWED:
        reviewed = consent_pb2.BreakGlassReviewed.FromString(env.payload.value)
        outcome = _short_enum(consent_pb2.ReviewStatus.Name(reviewed.outcome), "REVIEW_STATUS_")
        return AccessLine(index, at, REVIEW, reviewed.reviewer_id, "", "-", basis=reviewed.break_glass_id,
                          organization=reviewed.organization_id, asked_by=env.actor, event_id=env.event_id,
                          review=outcome)
    return None


@dataclass(frozen=True)
class Report:
    patient_id: str
    lines: Sequence[AccessLine]
    as_of: str = ""  # e.g. "checkpoint 1000000, verified 2026-12-01T10:00:00+00:00"

    @property
    def disclosures(self) -> list[AccessLine]:
        return [line for line in self.lines if line.kind == DISCLOSURE]

    @property
    def accesses(self) -> list[AccessLine]:
        return [line for line in self.lines if line.kind != DISCLOSURE]


def report(
    patient_id: str, entries: Iterable[tuple[int, bytes]], since: datetime | None = None,
    until: datetime | None = None, as_of: str = "",
) -> Report:
    """The patient's lines in ledger order, within [since, until)."""
    lines = []
    for index, event in sorted(entries):
        line = line_of(index, event)
        if line is None or (since and line.at < since) or (until and line.at >= until):
            continue
        lines.append(line)
    lines = _with_reviews(lines)
    return Report(patient_id, lines, as_of)


def _with_reviews(lines: list[AccessLine]) -> list[AccessLine]:
    """Show each break-glass's review on the break-glass line too."""
    reviews = {line.basis: line for line in lines if line.kind == REVIEW}
    out = []
    for line in lines:
        review = reviews.get(line.basis) if line.kind == BREAK_GLASS else None
        if review is not None:
            line = AccessLine(**{**asdict(line), "review": f"{review.review} at entry {review.index}"})
        out.append(line)
    return out


# ---- formats -------------------------------------------------------------------

COLUMNS = ("index", "at", "kind", "recipient", "purpose", "what", "decision", "reason", "basis", "organization",
           "asked_by", "event_id", "review")


def as_json(r: Report) -> str:
    return json.dumps({
        "patient_id": r.patient_id,
        "as_of": r.as_of,
        "disclosures": [line.as_dict() for line in r.disclosures],
        "accesses": [line.as_dict() for line in r.accesses],
    }, indent=2) + "\n"


def as_csv(r: Report) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["patient_id", *COLUMNS], lineterminator="\n")
    writer.writeheader()
    for line in r.lines:
        writer.writerow({"patient_id": r.patient_id, **line.as_dict()})
    return out.getvalue()


def _instant(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _reference(kind: str, identity_id: str) -> dict[str, Any]:
    return {"type": kind, "identifier": {"system": IDENTITY_SYSTEM, "value": identity_id}}


def _purpose_of_use(code: str) -> list[dict[str, Any]]:
    names = {PURPOSE_CODES[k]: PURPOSE_NAMES[k] for k in PURPOSE_CODES}
    if code not in names:
        return []
    return [{"coding": [{"system": PURPOSE_SYSTEM, "code": code, "display": names[code]}]}]


def audit_event(patient_id: str, line: AccessLine) -> dict[str, Any]:
    """One AuditEvent (FHIR R4) for a line, as a JSON-ready dict."""
    disclosure = line.kind == DISCLOSURE
    denied = line.decision == "DENY"
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": line.event_id or f"entry-{line.index}",
        "meta": {"profile": [BALP + ("IHE.BasicAudit.PatientRead" if disclosure else "IHE.BasicAudit.AuthZconsent")]},
        "recorded": _instant(line.at),
        "outcome": "8" if denied else "0",
        "outcomeDesc": " ".join(p for p in (line.kind, line.decision, line.reason, line.review) if p),
        "agent": [{
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                 "code": "IRCP", "display": "information recipient"}]},
            "who": _reference("Practitioner", line.recipient),
            "requestor": True,
            "purposeOfUse": _purpose_of_use(line.purpose),
        }],
        "source": {"observer": {"display": "MedLedger ledger"},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4",
                             "display": "Application Server"}]},
        "entity": [
            {"what": _reference("Patient", patient_id),
             "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1",
                      "display": "Person"},
             "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1",
                      "display": "Patient"}},
            {"what": {"identifier": {"system": LEDGER_INDEX_SYSTEM, "value": str(line.index)}},
             "description": f"ledger entry {line.index}, event {line.event_id}: {line.what}"},
        ],
    }
    if disclosure:
        event["type"] = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
                         "display": "Restful Operation"}
        event["subtype"] = [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read", "display": "read"}]
        event["action"] = "R"
    else:
        event["type"] = {"system": DCM, "code": "110113", "display": "Security Alert"}
        event["subtype"] = [{"system": AUTHZ_SUBTYPE, "code": "AuthZ-Consent",
                             "display": "Authorization Decision using Roles and Consent"}]
        event["action"] = "E"
    if line.basis:
        event["entity"].append({"what": {"identifier": {"system": "urn:medledger:basis", "value": line.basis}},
                                "description": "the consent or break-glass it rests on"})
    return event


def as_fhir(r: Report) -> str:
    """A FHIR R4 Bundle (type collection) of AuditEvents, validated by the
    R4B models (R4B's AuditEvent is R4's)."""
    from fhir.resources.R4B.bundle import Bundle

    entries = [{"fullUrl": f"urn:uuid:{line.event_id}" if line.event_id else f"urn:medledger:entry:{line.index}",
                "resource": audit_event(r.patient_id, line)} for line in r.lines]
    bundle = Bundle.model_validate({"resourceType": "Bundle", "type": "collection", "entry": entries})
    return bundle.model_dump_json(indent=2) + "\n"


def render(r: Report, fmt: str) -> str:
    """json, csv or fhir text (the table is drawn by the CLI)."""
    if fmt == "json":
        return as_json(r)
    if fmt == "csv":
        return as_csv(r)
    if fmt == "fhir":
        return as_fhir(r)
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
