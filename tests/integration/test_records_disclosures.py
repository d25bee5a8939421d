"""ListDisclosures on the real stack (identity, consent, ledger and records
processes on the real Kafka and PostgreSQL): a patient's accounting of
disclosures and access report lists exactly the reads and decisions that
happened — denials, consent reads and a reviewed break-glass included — each
with the ledger index the ledger gives its event; the patient, a
representative and the right auditors get it, paged and filtered; anyone
else is refused."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone
from typing import Callable, TypedDict, Unpack

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from medledger.records.domain import timestamp
from medledger.testing.consent import read_topic
from medledger.testing.identity import Party
from medledger.testing.records import observation
from medledger.testing.stack import wait_until
from medledger.v1 import consent_pb2 as cpb
from medledger.v1 import ledger_pb2
from medledger.v1 import records_pb2 as pb
from tests.integration.test_records_service import World, status_of, world  # noqa: F401 - the shared fixture

EMERGENCY = cpb.PURPOSE_EMERGENCY
BREAK_GLASS_TYPES = ("medledger.v1.BreakGlassInvoked", "medledger.v1.BreakGlassReviewed")


class ListOptions(TypedDict, total=False):
    """ListDisclosuresRequest's fields other than the patient's id."""

    since: Timestamp | None
    until: Timestamp | None
    page_size: int
    page_token: str


def listed(w: World, who: Party, **kw: Unpack[ListOptions]) -> list[pb.DisclosureEntry]:
    """Every page, following next_page_token."""
    request = pb.ListDisclosuresRequest(patient_id=w.patient.identity_id, **kw)
    entries: list[pb.DisclosureEntry] = []
    while True:
        page = w.records.ListDisclosures(request, metadata=who.metadata, timeout=20)
        entries += page.entries
        if not page.next_page_token:
            return entries
        request.page_token = page.next_page_token


def refused(call: Callable[[], object]) -> bool:
    try:
        call()
    except grpc.RpcError as exc:
        return bool(exc.code() == grpc.StatusCode.PERMISSION_DENIED)
    return False


async def test_list_disclosures_accounts_for_every_read_and_decision(world: World) -> None:
    w = world
    started = datetime.now(timezone.utc)
    _, receipt = w.write(w.doc_a, w.org_a, observation(w.patient.identity_id, f"m-{uuid.uuid4().hex}"))
    record_id = receipt.record_id
    disclosed: set[str] = set()

    disclosed.update(w.read(w.patient, record_id).disclosure_event_ids)  # the patient
    disclosed.update(w.read(w.doc_a, record_id).disclosure_event_ids)  # the custodian
    assert status_of(lambda: w.read(w.doc_b, record_id))[0] == grpc.StatusCode.PERMISSION_DENIED  # a DENY
    w.grant(w.org_b)
    disclosed.update(w.read(w.doc_b, record_id).disclosure_event_ids)  # consent's ALLOW
    doc_c = w.identity.practitioner(w.identity.organization())  # no consent: break-glass
    glass = w.consent.InvokeBreakGlass(cpb.InvokeBreakGlassRequest(
        patient_id=w.patient.identity_id, justification="unconscious in ER",
        reason=cpb.BREAK_GLASS_REASON_LIFE_THREATENING), metadata=doc_c.metadata, timeout=20)
    disclosed.update(w.read(doc_c, record_id, purpose=EMERGENCY).disclosure_event_ids)  # break-glass ALLOW
    auditor = w.identity.auditor()
    w.consent.ReviewBreakGlass(cpb.ReviewBreakGlassRequest(
        break_glass_id=glass.break_glass_id, outcome=cpb.REVIEW_STATUS_APPROVED, note="a real emergency"),
        metadata=auditor.metadata, timeout=20)
    assert len(disclosed) == 4

    # What happened, from the topics themselves: every access event about the
    # patient (disclosures and decisions) and the break-glass and its review,
    # once the outbox relay and the decision log have published them.
    expected: set[str] = set()
    for _ in range(100):
        happened = [e for e in await read_topic(w.topics.access_events) if e.aggregate_id == w.patient.identity_id]
        happened += [e for e in await read_topic(w.topics.consent_events)
                     if e.aggregate_id == w.patient.identity_id and e.event_type in BREAK_GLASS_TYPES]
        expected = {e.event_id for e in happened}
        if disclosed <= expected and len(expected) == len(disclosed) + 3 + 2:  # 3 decisions, break-glass + review
            break
        await asyncio.sleep(0.3)
    assert disclosed <= expected and len(expected) == len(disclosed) + 5

    entries: list[pb.DisclosureEntry] = []

    def complete() -> bool:
        entries[:] = listed(w, w.patient)
        return {e.event_id for e in entries} == expected and all(e.sequenced for e in entries)

    wait_until(complete, 60, 0.3, "every access event indexed and sequenced")
    assert len(entries) == len(expected)  # nothing twice, nothing else
    assert [(e.occurred_at.ToDatetime(), e.event_id) for e in entries] == sorted(
        (e.occurred_at.ToDatetime(), e.event_id) for e in entries)

    decisions = [e.access_decision for e in entries if e.WhichOneof("what") == "access_decision"]
    assert {(d.requester_id, d.decision) for d in decisions} == {
        (w.doc_b.identity_id, cpb.DECISION_DENY), (w.doc_b.identity_id, cpb.DECISION_ALLOW),
        (doc_c.identity_id, cpb.DECISION_ALLOW),
    }
    reads = {e.event_id: e.disclosure for e in entries if e.WhichOneof("what") == "disclosure"}
    assert set(reads) == disclosed
    assert {(d.requester_id, d.basis) for d in reads.values()} == {
        (w.patient.identity_id, pb.DISCLOSURE_BASIS_PATIENT), (w.doc_a.identity_id, pb.DISCLOSURE_BASIS_CUSTODIAN),
        (w.doc_b.identity_id, pb.DISCLOSURE_BASIS_CONSENT), (doc_c.identity_id, pb.DISCLOSURE_BASIS_BREAK_GLASS),
    }
    assert all([(r.record_id, r.version) for r in d.records] == [(record_id, 1)] for d in reads.values())
    glass_line = next(e for e in entries if e.WhichOneof("what") == "break_glass")
    assert glass_line.break_glass.break_glass_id == glass.break_glass_id
    assert (glass_line.review.outcome, glass_line.review.reviewer_id) == (cpb.REVIEW_STATUS_APPROVED, auditor.identity_id)

    # Each line is the ledger's entry at the index it names.
    for e in entries:
        entry = w.ledger.GetEntryByEventId(ledger_pb2.GetEntryByEventIdRequest(event_id=e.event_id),
                                           metadata=auditor.metadata, timeout=20)
        assert (entry.index, entry.event) == (e.ledger_index, e.event)

    # Paged and filtered: small pages give the same lines; since/until cut by time.
    assert [e.event_id for e in listed(w, w.patient, page_size=2)] == [e.event_id for e in entries]
    middle = entries[len(entries) // 2].occurred_at
    later = listed(w, w.patient, since=middle)
    earlier = listed(w, w.patient, until=middle)
    assert [e.event_id for e in earlier + later] == [e.event_id for e in entries]
    assert not listed(w, w.patient, until=timestamp(started - timedelta(minutes=5)))
    assert status_of(lambda: listed(w, w.patient, page_token="not a token"))[0] == grpc.StatusCode.INVALID_ARGUMENT

    # A representative, a network auditor and an auditor of the registering
    # organization get the same lines; another hospital's practitioner (even
    # one that read), another patient and another organization's auditor do not.
    representative = w.identity.patient(w.org_a)
    w.consent.RegisterRepresentative(cpb.RegisterRepresentativeRequest(
        patient_id=w.patient.identity_id, representative_id=representative.identity_id,
        legal_basis=cpb.LEGAL_BASIS_COURT_ORDER, evidence_sha256=b"\x01" * 32), metadata=w.org_a.metadata, timeout=20)
    wait_until(lambda: not refused(lambda: listed(w, representative)), 30, 0.2, "the representative in records' view")
    ids = [e.event_id for e in entries]
    for reader in (representative, auditor, w.identity.organization_auditor(w.org_a)):
        assert [e.event_id for e in listed(w, reader)][:len(ids)] == ids
    for stranger in (w.doc_b, doc_c, w.identity.patient(w.org_b), w.identity.organization_auditor(w.org_b), w.org_a):
        assert refused(lambda: listed(w, stranger))
