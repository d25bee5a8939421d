"""The instruments behind the alerts, without a broker or database: what each
reads on a leader and on a standby, that lag and waiting records are counted
from the right positions, and that labels are kinds and enum names, never
the ids or texts a record or request carried."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
from prometheus_client import REGISTRY

from medledger.consent import metrics as consent_metrics
from medledger.consent.decisions import Verdict
from medledger.ledger.intake import REJECT_KINDS, BatchPlan, Refused, admit, plan_batch
from medledger.ledger.metrics import SequencerMetrics
from medledger.runtime.envelope import EnvelopeVerifier
from medledger.runtime.metrics import ConsumerLag, Every
from medledger.runtime.positions import Delivery
from medledger.v1 import consent_pb2 as pb


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


# ---- Kafka lag -------------------------------------------------------------------------------------------


def test_lag_is_the_log_end_minus_the_position_and_goes_when_the_reader_stops() -> None:
    lag = ConsumerLag("unit reader")
    lag.observe("t.events", 0, 120, 100)
    lag.observe("t.events", 1, 50, 50)
    lag.observe("t.events", 2, 10, 12)  # a position past the last end seen: never negative
    assert sample("medledger_kafka_consumer_lag_records", reader="unit reader", topic="t.events", partition="0") == 20
    assert sample("medledger_kafka_consumer_lag_records", reader="unit reader", topic="t.events", partition="1") == 0
    assert sample("medledger_kafka_consumer_lag_records", reader="unit reader", topic="t.events", partition="2") == 0
    lag.forget()
    assert sample("medledger_kafka_consumer_lag_records", reader="unit reader", topic="t.events", partition="0") is None


# ---- the ledger's sequencer -----------------------------------------------------------------------------


class Role:
    def __init__(self) -> None:
        self.leading = False

    def __call__(self) -> bool:
        return self.leading


def test_a_standby_reports_no_log_values_and_no_leadership() -> None:
    role = Role()
    seq = SequencerMetrics(role)
    seq.loaded(10, {("a", 0): 10}, lambda: {("a", 0): 15})
    seq.checkpointed(10, time.time(), signed_here=False)
    for name in ("medledger_ledger_tree_size", "medledger_ledger_checkpoint_tree_size",
                 "medledger_ledger_checkpoint_age_seconds", "medledger_ledger_pending_records"):
        assert math.isnan(sample(name) or 0.0), name
    assert sample("medledger_leader", work="ledger sequencer") == 0
    role.leading = True
    assert sample("medledger_leader", work="ledger sequencer") == 1
    assert sample("medledger_ledger_tree_size") == 10


def test_records_waiting_count_from_the_committed_positions_not_the_fetched_ones() -> None:
    """A batch fetched but not committed (a hung transaction) still waits."""
    role = Role()
    role.leading = True
    ends = {("a", 0): 100, ("a", 1): 40, ("b", 0): 7}
    seq = SequencerMetrics(role)
    seq.loaded(60, {("a", 0): 60}, lambda: ends)
    assert sample("medledger_ledger_pending_records") == 40 + 40 + 7  # partitions never committed start at 0
    seq.committed(87, BatchPlan(offsets={("a", 0): 100, ("a", 1): 40, ("b", 0): 7}), 147)
    assert sample("medledger_ledger_pending_records") == 0
    ends[("b", 0)] = 9  # two more arrive while the loop is busy elsewhere
    assert sample("medledger_ledger_pending_records") == 2
    assert sample("medledger_ledger_tree_size") == 147


def test_waiting_records_read_nan_while_the_consumer_cannot_say() -> None:
    def stopped() -> dict[tuple[str, int], int]:
        raise RuntimeError("consumer stopped")

    role = Role()
    role.leading = True
    SequencerMetrics(role).loaded(0, {}, stopped)
    assert math.isnan(sample("medledger_ledger_pending_records") or 0.0)


def test_checkpoint_age_counts_from_when_it_was_signed() -> None:
    role = Role()
    role.leading = True
    seq = SequencerMetrics(role)
    signed_before = sample("medledger_ledger_checkpoints_signed_total") or 0
    seq.checkpointed(42, time.time() - 30)
    assert (sample("medledger_ledger_checkpoint_age_seconds") or 0) >= 30
    assert sample("medledger_ledger_checkpoint_tree_size") == 42
    assert sample("medledger_ledger_checkpoints_signed_total") == signed_before + 1
    seq.checkpointed(42, time.time(), signed_here=False)  # loaded from the database: not signed here
    assert sample("medledger_ledger_checkpoints_signed_total") == signed_before + 1


def test_rejects_are_counted_by_kind_never_by_their_detailed_reason() -> None:
    from medledger.ledger.intake import LogState
    from medledger.ledger import merkle

    event_id = "0195f1c8-6c2e-7d5b-9e0a-3f4c5d6e7f80"
    record = Delivery("t.access.events", 0, 5, b"\xff\x00 not an envelope " + event_id.encode())
    refused = admit(record, EnvelopeVerifier({}, {}))  # refused before any signature check
    assert isinstance(refused, Refused) and refused.kind == "not_an_envelope"
    state = LogState(merkle.CompactRange(0, []), b"\x00" * 32, {})
    plan = plan_batch(state, [record], [refused], {})
    before = {k: sample("medledger_ledger_rejected_total", reason=k) or 0 for k in REJECT_KINDS}
    role = Role()
    role.leading = True
    SequencerMetrics(role).committed(1, plan, 0)
    after = {k: sample("medledger_ledger_rejected_total", reason=k) or 0 for k in REJECT_KINDS}
    assert {k: after[k] - before[k] for k in REJECT_KINDS if after[k] != before[k]} == {"not_an_envelope": 1}
    reasons = {s.labels.get("reason") for f in REGISTRY.collect() for s in f.samples if s.name == "medledger_ledger_rejected_total"}
    assert reasons == set(REJECT_KINDS)


@pytest.mark.parametrize("value, kind", [
    (None, "tombstone"),
    (b"x" * (1024 * 1024 + 1), "too_large"),
    (b"\xff\xff", "not_an_envelope"),
])
def test_every_refusal_has_a_known_kind(value: bytes | None, kind: str) -> None:
    verdict = admit(Delivery("t", 0, 0, value), EnvelopeVerifier({}, {}))
    assert isinstance(verdict, Refused) and verdict.kind == kind and kind in REJECT_KINDS


# ---- consent ---------------------------------------------------------------------------------------------


def test_decisions_are_labelled_by_enum_names_only() -> None:
    labels = {"purpose": "EMERGENCY", "decision": "ALLOW", "reason": "BREAK_GLASS"}
    before = sample("medledger_consent_decisions_total", **labels) or 0
    verdict = Verdict(True, pb.REASON_BREAK_GLASS, break_glass_id="bg-7f1c2d", detail="patient p-0042 in ER")
    consent_metrics.decided(pb.PURPOSE_EMERGENCY, verdict)
    assert sample("medledger_consent_decisions_total", **labels) == before + 1
    values = {v for f in REGISTRY.collect() for s in f.samples for v in s.labels.values()}
    assert not {v for v in values if "bg-7f1c2d" in v or "p-0042" in v}


class Conn:
    def __init__(self, pending: int, oldest: float | None) -> None:
        self.row = {"n": pending, "oldest": oldest}

    async def fetchrow(self, query: str, *args: Any) -> dict[str, Any]:
        assert "PENDING_REVIEW" in query
        return self.row


async def test_break_glass_awaiting_review_is_exported_only_by_the_housekeeping_replica() -> None:
    review = consent_metrics.BreakGlassReview()
    role = Role()
    review.led_by(role, every_s=0.0)
    assert list(review.collect()) == []  # nothing measured yet
    role.leading = True
    await review.refresh(Conn(3, time.time() - 90_000))
    (pending, oldest) = list(review.collect())
    assert pending.samples[0].value == 3
    assert oldest.samples[0].value >= 90_000
    await review.refresh(Conn(0, None))
    assert [f.samples[0].value for f in review.collect()] == [0, 0.0]
    role.leading = False  # lost the lock: another replica measures now
    assert list(review.collect()) == []


def test_measurements_that_cost_a_query_are_rate_limited() -> None:
    every = Every(3600)
    assert every.due() and not every.due()
