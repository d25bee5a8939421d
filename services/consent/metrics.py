"""The consent service's metrics (runtime/metrics.py has the shared ones):
decisions by purpose, decision and reason; how stale this replica's
projection is against its bound; decisions not yet acknowledged on
access.events; break-glass accesses awaiting review, and reviews by outcome.

Labels are enum names only (``TREATMENT``, ``DENY``, ``CONSENT_REVOKED``):
who asked, about whom, and for which record never become a label.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from medledger.consent import store
from medledger.consent.decisions import Verdict
from medledger.runtime.metrics import Every, track_leadership
from medledger.v1 import consent_pb2 as pb

DECISIONS = Counter(
    "medledger_consent_decisions", "Access decisions answered, by purpose, decision and reason.",
    ["purpose", "decision", "reason"],
)
BREAK_GLASS_INVOKED = Counter(
    "medledger_consent_break_glass_invoked", "Break-glass accesses granted, by the reason chosen from the fixed list.",
    ["reason"],
)
BREAK_GLASS_REVIEWS = Counter(
    "medledger_consent_break_glass_reviews",
    "Break-glass reviews recorded (ReviewBreakGlass), by outcome: APPROVED or INAPPROPRIATE.",
    ["outcome"],
)
STALENESS = Gauge(
    "medledger_consent_projection_staleness_seconds",
    "How old this replica's view of consent.events and identity.events may be (+Inf until it first caught up).",
)
MAX_STALENESS = Gauge(
    "medledger_consent_max_staleness_seconds",
    "The bound (MEDLEDGER_CONSENT_MAX_STALENESS_MS) past which this replica refuses to decide.",
)
UNRECORDED = Gauge(
    "medledger_consent_unrecorded_decisions",
    "AccessDecided events handed to Kafka and not acknowledged yet (CheckAccess fails closed at the limit).",
)
CONSENTS = Gauge("medledger_consent_projection_consents", "Consents held in this replica's projection.")


@functools.cache
def _decisions(
    purpose: pb.Purpose.ValueType, decision: pb.Decision.ValueType, reason: pb.DecisionReason.ValueType
) -> Any:
    """The counter child for one combination (enum values, so a bounded set)."""
    return DECISIONS.labels(
        pb.Purpose.Name(purpose).removeprefix("PURPOSE_"),
        pb.Decision.Name(decision).removeprefix("DECISION_"),
        pb.DecisionReason.Name(reason).removeprefix("REASON_"),
    )


def decided(purpose: pb.Purpose.ValueType, verdict: Verdict) -> None:
    _decisions(purpose, verdict.decision, verdict.reason).inc()


def break_glass_invoked(reason: pb.BreakGlassReason.ValueType) -> None:
    BREAK_GLASS_INVOKED.labels(pb.BreakGlassReason.Name(reason).removeprefix("BREAK_GLASS_REASON_")).inc()


def _review_outcome(outcome: pb.ReviewStatus.ValueType) -> Any:
    return BREAK_GLASS_REVIEWS.labels(pb.ReviewStatus.Name(outcome).removeprefix("REVIEW_STATUS_"))


def break_glass_reviewed(outcome: pb.ReviewStatus.ValueType) -> None:
    """A review was recorded (a break-glass is reviewed once: a second review is refused)."""
    _review_outcome(outcome).inc()


for _outcome in (pb.REVIEW_STATUS_APPROVED, pb.REVIEW_STATUS_INAPPROPRIATE):
    _review_outcome(_outcome)  # both series at zero, so increase() sees the first review


def watch_replica(
    staleness: Callable[[], float], max_staleness_s: float, unrecorded: Callable[[], int], consents: Callable[[], int]
) -> None:
    """Gauges read from the replica's own state when scraped."""
    STALENESS.set_function(staleness)
    MAX_STALENESS.set(max_staleness_s)
    UNRECORDED.set_function(unrecorded)
    CONSENTS.set_function(consents)


class BreakGlassReview(Collector):
    """Break-glass accesses the database still flags PENDING_REVIEW, measured by
    the housekeeping replica. Other replicas export nothing, so a sum over
    replicas counts each access once."""

    def __init__(self) -> None:
        self.every = Every(5.0)  # until led_by says how often
        self.is_leader: Callable[[], bool] = lambda: False
        self._measured: tuple[int, float | None] | None = None

    def led_by(self, is_leader: Callable[[], bool], every_s: float) -> None:
        """Whether this replica does housekeeping (and so measures, at most
        every every_s), read when scraped."""
        self.is_leader = is_leader
        self.every = Every(every_s)
        track_leadership("consent housekeeping", is_leader)

    async def refresh(self, conn: store.Conn) -> None:
        if self.every.due():
            self._measured = await store.pending_review(conn)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The names, for the registry (collect() yields nothing until measured)."""
        return self._families(0, 0.0)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        measured = self._measured
        if measured is None or not self.is_leader():
            return iter(())
        pending, oldest_invoked_at = measured
        return self._families(pending, 0.0 if oldest_invoked_at is None else max(0.0, time.time() - oldest_invoked_at))

    @staticmethod
    def _families(pending: int, oldest_age_s: float) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "medledger_consent_break_glass_pending_review", "Break-glass accesses not reviewed yet.", value=pending
        )
        yield GaugeMetricFamily(
            "medledger_consent_break_glass_oldest_pending_review_age_seconds",
            "Age of the oldest break-glass access not reviewed yet (0 when none waits).", value=oldest_age_s,
        )


BREAK_GLASS_REVIEW = BreakGlassReview()
REGISTRY.register(BREAK_GLASS_REVIEW)
