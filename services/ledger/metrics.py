"""The ledger's metrics (runtime/metrics.py has the shared ones): what the
sequencer appended and refused, how far the signed checkpoint trails, and
whether this process is the one sequencing.

Values only the active sequencer knows (tree size, checkpoint, records
waiting) read NaN on a standby, so ``max`` over replicas gives the leader's.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Mapping

from prometheus_client import Counter, Gauge, Histogram

from medledger.ledger.intake import REJECT_KINDS, BatchPlan
from medledger.runtime.metrics import track_leadership
from medledger.runtime.positions import Position

ENTRIES = Counter("medledger_ledger_entries_sequenced", "Events appended to the log.")
BATCH = Histogram(
    "medledger_ledger_batch_records", "Kafka records committed per sequencing transaction.",
    buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 20000),
)
REJECTED = Counter(
    "medledger_ledger_rejected", "Records refused and sent to ledger.rejected, by kind of reason.", ["reason"]
)
DUPLICATES = Counter("medledger_ledger_duplicates_skipped", "Records repeating a sequenced event with the same bytes.")
CHECKPOINTS = Counter("medledger_ledger_checkpoints_signed", "Checkpoints this process signed.")
TREE_SIZE = Gauge("medledger_ledger_tree_size", "Entries in the committed log (NaN on a standby).")
CHECKPOINT_SIZE = Gauge(
    "medledger_ledger_checkpoint_tree_size", "Tree size of the latest signed checkpoint (NaN on a standby)."
)
CHECKPOINT_AGE = Gauge(
    "medledger_ledger_checkpoint_age_seconds", "Seconds since the latest checkpoint was signed (NaN on a standby)."
)
PENDING = Gauge(
    "medledger_ledger_pending_records",
    "Records on the event topics that the log has not committed yet (NaN on a standby).",
)

WATCH_STREAMS = Gauge("medledger_ledger_watch_streams", "WatchCheckpoints streams this process serves now.")
WATCH_REFUSED = Counter(
    "medledger_ledger_watch_refused", "WatchCheckpoints streams refused because MEDLEDGER_LEDGER_MAX_WATCHERS were open."
)
WATCH_POLLS = Counter(
    "medledger_ledger_watch_polls", "Database reads for checkpoint watchers (one per poll, shared by every watcher)."
)

for _kind in REJECT_KINDS:  # every series exists from the start, so increase() sees the first reject
    REJECTED.labels(_kind)


class SequencerMetrics:
    """What the sequencer reports, read when scraped."""

    def __init__(self, is_leader: Callable[[], bool]) -> None:
        self._is_leader = is_leader
        self._tree_size = math.nan
        self._checkpoint_size = math.nan
        self._checkpoint_at = math.nan  # Unix time it was signed
        self._committed: dict[Position, int] = {}  # next offset per partition, as committed
        self._log_ends: Callable[[], Mapping[Position, int]] = dict
        track_leadership("ledger sequencer", is_leader)
        TREE_SIZE.set_function(lambda: self._leading(lambda: self._tree_size))
        CHECKPOINT_SIZE.set_function(lambda: self._leading(lambda: self._checkpoint_size))
        CHECKPOINT_AGE.set_function(lambda: self._leading(lambda: time.time() - self._checkpoint_at))
        PENDING.set_function(lambda: self._leading(self._pending))

    def _leading(self, value: Callable[[], float]) -> float:
        return float(value()) if self._is_leader() else math.nan

    def loaded(self, tree_size: int, offsets: Mapping[Position, int], log_ends: Callable[[], Mapping[Position, int]]) -> None:
        """The log as a new leader found it in the database, and where to read
        the event topics' ends (the consumer's view, no request)."""
        self._tree_size = tree_size
        self._committed = dict(offsets)
        self._log_ends = log_ends

    def _pending(self) -> float:
        """Records between what the log committed and each partition's end as
        last fetched. Read when scraped, from the metrics thread: the reader
        keeps fetching while a commit hangs, so this keeps rising then."""
        try:
            ends = dict(self._log_ends())
            committed = dict(self._committed)
        except Exception:  # noqa: BLE001 - the consumer is stopping; nothing to report
            return math.nan
        return float(sum(max(0, end - committed.get(position, 0)) for position, end in ends.items()))

    def committed(self, records: int, plan: BatchPlan, tree_size: int) -> None:
        self._tree_size = tree_size
        self._committed = {**self._committed, **plan.offsets}
        BATCH.observe(records)
        ENTRIES.inc(len(plan.entries))
        if plan.duplicates:
            DUPLICATES.inc(plan.duplicates)
        for rejection in plan.rejections:
            REJECTED.labels(rejection.kind).inc()

    def checkpointed(self, tree_size: int, signed_at: float, signed_here: bool = True) -> None:
        self._checkpoint_size = tree_size
        self._checkpoint_at = signed_at
        if signed_here:
            CHECKPOINTS.inc()
