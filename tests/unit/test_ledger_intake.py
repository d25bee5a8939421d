"""The sequencer's pure decide step: what a batch of Kafka records adds to the log."""

from __future__ import annotations

import pytest

from medledger.ledger import merkle
from medledger.ledger.intake import (
    MAX_EVENT_BYTES,
    Admitted,
    BatchPlan,
    LogState,
    Refused,
    SourceRecord,
    UNAUTHENTICATED,
    event_ids,
    plan_batch,
)
from medledger.ledger.intake import admit as intake_admit
from medledger.ledger.intake import classify as intake_classify
from medledger.runtime.envelope import EnvelopeVerifier, envelope, parse_producer_keys
from medledger.testing.producers import TestProducers
from medledger.v1 import consent_pb2, events_pb2

PRODUCERS = TestProducers()
# the test topics "t", "a".."d" all play consent.events
VERIFIER = EnvelopeVerifier(parse_producer_keys(PRODUCERS.keys_text), {t: "consent.events" for t in "tabcd"})


def _unsigned(n: int, event_id: str | None = None) -> events_pb2.EventEnvelope:
    payload = consent_pb2.ConsentRevoked(consent_id=f"c-{n}", patient_id="p")
    return envelope(payload, aggregate_id="p", producer="consent", event_id=event_id)


def _event(n: int, event_id: str | None = None) -> bytes:
    return PRODUCERS.seal(_unsigned(n, event_id))


def admit(value: bytes | None, topic: str = "t") -> Admitted | Refused:
    return intake_admit(SourceRecord(topic, 0, 0, value), VERIFIER)


def classify(records: list[SourceRecord]) -> list[Admitted | Refused]:
    return intake_classify(records, VERIFIER)


def _state() -> LogState:
    return LogState(merkle.CompactRange.empty(), merkle.GENESIS_CHAIN, {})


def _plan(state: LogState, records: list[SourceRecord], known: dict[str, bytes] | None = None) -> BatchPlan:
    verdicts = classify(records)
    return plan_batch(state, records, verdicts, known or {})


def test_admit_accepts_a_valid_envelope_and_hashes_its_exact_bytes() -> None:
    value = _event(1, "id-1")
    verdict = admit(value)
    assert verdict == Admitted("id-1", merkle.leaf_hash(value))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "tombstone"),
        (b"\xff\xff\xff", "not a medledger.v1.EventEnvelope"),
        (events_pb2.EventEnvelope(event_type="x").SerializeToString(), "no event_id"),
        (events_pb2.EventEnvelope(event_id="x").SerializeToString(), "no event_type"),
        # PostgreSQL text cannot hold NUL: such an id must be refused, not crash the sequencer
        (events_pb2.EventEnvelope(event_id="a\x00b", event_type="y").SerializeToString(), "NUL"),
        (events_pb2.EventEnvelope(event_id="x" * 201, event_type="y").SerializeToString(), "longer than 200"),
        (events_pb2.EventEnvelope(event_id="x", event_type="y", actor="a" * MAX_EVENT_BYTES).SerializeToString(), "limit"),
    ],
)
def test_admit_refuses_with_a_reason(value: bytes | None, reason: str) -> None:
    verdict = admit(value)
    assert isinstance(verdict, Refused) and reason in verdict.reason


def test_a_batch_appends_gap_free_entries_with_chain_and_tiles() -> None:
    state = _state()
    records = [SourceRecord("t", 0, i, _event(i)) for i in range(5)]
    plan = _plan(state, records)
    assert [e.index for e in plan.entries] == [0, 1, 2, 3, 4]
    chain = merkle.GENESIS_CHAIN
    for e in plan.entries:
        chain = merkle.chain_hash(chain, e.leaf_hash)
        assert e.chain_hash == chain
    assert state.size == 5 and state.chain_head == chain
    # the leaf hashes, as the level-0 tile the batch stores (inner nodes are recomputed from it)
    assert plan.tiles == {(0, 0): b"".join(e.leaf_hash for e in plan.entries)}
    assert plan.offsets == {("t", 0): 5}


def test_root_after_batches_equals_root_of_all_leaves() -> None:
    state = _state()
    values = [_event(i) for i in range(37)]
    for start in range(0, 37, 10):
        _plan(state, [SourceRecord("t", 0, i, values[i]) for i in range(start, min(37, start + 10))])
    leaves = [merkle.leaf_hash(v) for v in values]
    reference = merkle.CompactRange.empty()
    for leaf in leaves:
        reference.append(leaf)
    assert state.tree.root() == reference.root()


def test_redelivered_records_are_skipped_by_offset() -> None:
    state = _state()
    records = [SourceRecord("t", 1, i, _event(i)) for i in range(3)]
    _plan(state, records)
    again = _plan(state, records + [SourceRecord("t", 1, 3, _event(3))])
    assert [e.source.offset for e in again.entries] == [3]
    assert state.size == 4


def test_same_event_id_twice_is_one_entry_and_a_conflict_is_rejected() -> None:
    state = _state()
    first = _event(1, "same")
    conflicting = _event(2, "same")
    plan = _plan(state, [SourceRecord("a", 0, 0, first), SourceRecord("b", 0, 0, first), SourceRecord("c", 0, 0, conflicting)])
    assert len(plan.entries) == 1 and plan.duplicates == 1
    assert len(plan.rejections) == 1 and "different content" in plan.rejections[0].reason
    # already in the log from an earlier batch: still skipped
    later = _plan(state, [SourceRecord("d", 0, 0, first)], known={"same": merkle.leaf_hash(first)})
    assert later.entries == [] and later.duplicates == 1 and later.offsets == {("d", 0): 1}


def test_rejections_advance_the_offset_but_not_the_log() -> None:
    state = _state()
    plan = _plan(state, [SourceRecord("t", 0, 0, b"junk"), SourceRecord("t", 0, 1, _event(1))])
    assert len(plan.rejections) == 1 and plan.rejections[0].source.offset == 0
    assert [e.index for e in plan.entries] == [0]
    assert plan.offsets == {("t", 0): 2}


def test_event_ids_lists_only_admitted_records() -> None:
    records = [SourceRecord("t", 0, 0, _event(0, "a")), SourceRecord("t", 0, 1, b"junk")]
    assert event_ids(classify(records)) == ["a"]


def _forged() -> dict[str, bytes]:
    return PRODUCERS.forgeries(_unsigned(1), not_allowed="records")


@pytest.mark.parametrize("kind", list(_forged()))
def test_admit_refuses_every_kind_of_forged_event(kind: str) -> None:
    verdict = admit(_forged()[kind])
    assert isinstance(verdict, Refused) and verdict.reason.startswith(UNAUTHENTICATED), verdict


def test_a_genuine_event_is_refused_on_a_topic_that_does_not_carry_its_type() -> None:
    verifier = EnvelopeVerifier(VERIFIER.keys, {"x": "identity.events"})
    verdict = intake_admit(SourceRecord("x", 0, 0, _event(6)), verifier)
    assert isinstance(verdict, Refused) and "not published on x" in verdict.reason


def test_forged_events_never_become_entries() -> None:
    state = _state()
    forged = list(_forged().values())
    plan = _plan(state, [SourceRecord("t", 0, i, v) for i, v in enumerate(forged + [_event(9)])])
    assert len(plan.entries) == 1 and len(plan.rejections) == len(forged)
    assert all(r.reason.startswith(UNAUTHENTICATED) for r in plan.rejections)
