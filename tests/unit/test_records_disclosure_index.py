"""ListDisclosures' pure core (records/disclosure_index.py): which events a
patient's accounting holds, who may list it, the request's validation and
the paging cursor."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from medledger.records.disclosure_index import IndexRow, index_row, may_list, page, window
from medledger.runtime.envelope import envelope
from medledger.runtime.errors import InvalidArgument
from medledger.runtime.times import timestamp
from medledger.v1 import consent_pb2, records_pb2 as pb

AT = datetime(2026, 11, 30, 12, tzinfo=timezone.utc)
PATIENT = "patient-1"


def test_only_the_accounting_event_types_are_indexed_with_their_break_glass_id() -> None:
    glass = consent_pb2.BreakGlassInvoked(break_glass_id="bg-1", patient_id=PATIENT, practitioner_id="doc")
    review = consent_pb2.BreakGlassReviewed(break_glass_id="bg-1", patient_id=PATIENT)
    decided = consent_pb2.AccessDecided(requester_id="doc", patient_id=PATIENT)
    granted = consent_pb2.ConsentGranted()
    rows = [index_row(e, e.SerializeToString()) for e in (
        envelope(m, aggregate_id=PATIENT, producer="consent", occurred_at=AT) for m in (glass, review, decided, granted)
    )]
    assert [r.break_glass_id if r else None for r in rows] == ["bg-1", "bg-1", "", None]
    assert all(r.patient_id == PATIENT and r.occurred_at == AT for r in rows if r)


@pytest.mark.parametrize("subject, kind, audits, known, expected", [
    (PATIENT, "PATIENT", False, True, True),  # the patient
    (PATIENT, "PATIENT", False, False, True),  # even before records' view knows them: their own (empty) list
    ("rep", "PATIENT", False, True, True),  # an active representative
    ("rep", "PRACTITIONER", False, True, True),
    ("doc", "PRACTITIONER", False, True, False),  # anyone else, whatever they read
    ("other-patient", "PATIENT", False, True, False),
    ("auditor", "AUDITOR", True, True, True),  # an auditor whose remit covers the registrar
    ("auditor", "AUDITOR", False, True, False),  # another organization's auditor
    ("auditor", "AUDITOR", True, False, False),  # an unknown patient: refused like a stranger
])
def test_who_may_list(subject: str, kind: str, audits: bool, known: bool, expected: bool) -> None:
    assert may_list(subject, kind, audits, PATIENT, known, {"rep"}) is expected


def test_requests_are_validated_and_bounded() -> None:
    assert window(pb.ListDisclosuresRequest(patient_id=PATIENT)).size == 100
    assert window(pb.ListDisclosuresRequest(patient_id=PATIENT, page_size=50_000)).size == 1000
    for bad in (pb.ListDisclosuresRequest(), pb.ListDisclosuresRequest(patient_id=PATIENT, page_token="?"),
                pb.ListDisclosuresRequest(patient_id=PATIENT, since=timestamp(AT), until=timestamp(AT - timedelta(1)))):
        with pytest.raises(InvalidArgument):
            window(bad)


def test_a_page_says_where_the_next_begins_only_when_more_follow() -> None:
    rows = []
    for i in range(3):
        env = envelope(consent_pb2.AccessDecided(requester_id=f"doc-{i}"), aggregate_id=PATIENT, producer="consent",
                       occurred_at=AT + timedelta(seconds=i))
        row = index_row(env, env.SerializeToString())
        assert isinstance(row, IndexRow)
        rows.append((row, i if i else None, None))
    full = page(rows, 2)
    assert [e.access_decision.requester_id for e in full.entries] == ["doc-0", "doc-1"]
    assert [(e.sequenced, e.ledger_index) for e in full.entries] == [(False, 0), (True, 1)]
    after = window(pb.ListDisclosuresRequest(patient_id=PATIENT, page_token=full.next_page_token)).after
    assert after is not None and (after.created_at, after.record_id) == (rows[1][0].occurred_at, rows[1][0].event_id)
    assert page(rows, 3).next_page_token == ""
