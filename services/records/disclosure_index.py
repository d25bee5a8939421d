"""The per-patient disclosure index behind ListDisclosures, with no I/O
(docs/architecture.md, Decisions: "Records: the disclosure index").

Which events a patient's accounting of disclosures and access report is made
of (RecordsDisclosed, AccessDecided, BreakGlassInvoked, BreakGlassReviewed),
the row each becomes, who may list a patient's lines, the page cursor, and
the answer's messages. The adapter (``disclosures.py``) feeds the rows from a
PositionedConsumer and runs the queries; the audit tool uses the same event
types for its own index.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Collection, Sequence, TypeVar

from google.protobuf.message import Message

from medledger.records import domain
from medledger.runtime.errors import InvalidArgument
from medledger.runtime.times import timestamp, utc
from medledger.v1 import consent_pb2, events_pb2, records_pb2 as pb

ACCESS_DECIDED = consent_pb2.AccessDecided.DESCRIPTOR.full_name
BREAK_GLASS_INVOKED = consent_pb2.BreakGlassInvoked.DESCRIPTOR.full_name
RECORDS_DISCLOSED = pb.RecordsDisclosed.DESCRIPTOR.full_name
BREAK_GLASS_REVIEWED = consent_pb2.BreakGlassReviewed.DESCRIPTOR.full_name
PATIENT_EVENT_TYPES = frozenset({ACCESS_DECIDED, BREAK_GLASS_INVOKED, RECORDS_DISCLOSED, BREAK_GLASS_REVIEWED})
DEFAULT_PAGE, MAX_PAGE = 100, 1000
M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class IndexRow:
    """One indexed event: its patient (the envelope's aggregate id, which is
    the patient for every type indexed), time, break-glass id (to attach a
    review to its break-glass) and the signed envelope bytes."""

    event_id: str
    patient_id: str
    event_type: str
    occurred_at: datetime
    break_glass_id: str
    envelope: bytes


def index_row(env: events_pb2.EventEnvelope, value: bytes) -> IndexRow | None:
    """The row of a verified envelope whose bytes are ``value``; None for
    event types the accounting does not hold."""
    if env.event_type not in PATIENT_EVENT_TYPES or not env.aggregate_id:
        return None
    break_glass_id = ""
    if env.event_type == BREAK_GLASS_INVOKED:
        break_glass_id = _payload(env, consent_pb2.BreakGlassInvoked).break_glass_id
    elif env.event_type == BREAK_GLASS_REVIEWED:
        break_glass_id = _payload(env, consent_pb2.BreakGlassReviewed).break_glass_id
    return IndexRow(env.event_id, env.aggregate_id, env.event_type, utc(env.occurred_at), break_glass_id, value)


def may_list(subject: str, kind: str, audits_registrar: bool, patient_id: str, patient_known: bool,
             representatives: Collection[str]) -> bool:
    """The patient, an active representative, or an auditor whose remit
    covers the organization that registered the (known) patient: a network
    auditor any, an organization auditor its own organizations' patients
    (``audits_registrar``: ``Caller.audits({registered_by})``)."""
    if kind == "AUDITOR":
        return patient_known and audits_registrar
    return subject == patient_id or subject in representatives


@dataclass(frozen=True)
class Window:
    """A page request, validated: patient, time range, cursor and size."""

    patient_id: str
    since: datetime | None
    until: datetime | None
    after: domain.ListCursor | None
    size: int


def window(request: pb.ListDisclosuresRequest) -> Window:
    domain.require_id(request.patient_id, "patient_id")
    since = utc(request.since) if request.HasField("since") else None
    until = utc(request.until) if request.HasField("until") else None
    if since is not None and until is not None and since > until:
        raise InvalidArgument("since must not be after until")
    return Window(request.patient_id, since, until, domain.decode_cursor(request.page_token),
                  domain.page_size(request.page_size, DEFAULT_PAGE, MAX_PAGE))


def next_token(last: IndexRow) -> str:
    """The cursor after ``last`` (occurred_at in microseconds, event id)."""
    micros = (last.occurred_at - domain.EPOCH) // timedelta(microseconds=1)
    return domain.encode_cursor(domain.ListCursor(micros, last.event_id))


def entry_message(row: IndexRow, ledger_index: int | None, review: bytes | None) -> pb.DisclosureEntry:
    """One line of the answer: the event's payload, its ledger index when
    known, and for a break-glass its review's payload."""
    env = events_pb2.EventEnvelope.FromString(row.envelope)
    entry = pb.DisclosureEntry(event_id=row.event_id, occurred_at=timestamp(row.occurred_at), event=row.envelope,
                               sequenced=ledger_index is not None, ledger_index=ledger_index or 0)
    if row.event_type == RECORDS_DISCLOSED:
        env.payload.Unpack(entry.disclosure)
    elif row.event_type == ACCESS_DECIDED:
        env.payload.Unpack(entry.access_decision)
    elif row.event_type == BREAK_GLASS_INVOKED:
        env.payload.Unpack(entry.break_glass)
        if review is not None:
            events_pb2.EventEnvelope.FromString(review).payload.Unpack(entry.review)
    else:
        env.payload.Unpack(entry.break_glass_review)
    return entry


def page(rows: Sequence[tuple[IndexRow, int | None, bytes | None]], size: int) -> pb.ListDisclosuresResponse:
    """The answer for up to size + 1 rows read (the extra one says more follow)."""
    shown = rows[:size]
    more = len(rows) > size
    return pb.ListDisclosuresResponse(
        entries=[entry_message(row, index, review) for row, index, review in shown],
        next_page_token=next_token(shown[-1][0]) if more and shown else "",
    )


def _payload(env: events_pb2.EventEnvelope, cls: type[M]) -> M:
    message = cls()
    env.payload.Unpack(message)
    return message
