"""monitor/stall.py: when a replica counts as stalled (and asks for a rebalance)."""

from __future__ import annotations

from medledger.monitor.stall import StallWatch


def test_a_partition_with_events_waiting_and_no_committed_progress_is_stalled_after_the_limit() -> None:
    watch = StallWatch(stall_s=20)
    assert watch.stalled(0, [("access.events", 1, 30, 5)]) == []
    assert watch.stalled(15, [("access.events", 1, 30, 5)]) == []
    assert watch.stalled(20, [("access.events", 1, 31, 5)]) == [("access.events", 1)]
    # forgotten once reported: the next verdict needs another full period
    assert watch.stalled(25, [("access.events", 1, 31, 5)]) == []
    assert watch.stalled(45, [("access.events", 1, 31, 5)]) == [("access.events", 1)]


def test_a_slow_replica_that_still_commits_is_never_stalled() -> None:
    watch = StallWatch(stall_s=20)
    for t in range(0, 200, 5):
        assert watch.stalled(t, [("access.events", 0, 10_000 + t, t)]) == []


def test_an_idle_replica_with_nothing_waiting_is_never_stalled() -> None:
    watch = StallWatch(stall_s=20)
    for t in range(0, 200, 5):
        assert watch.stalled(t, [("access.events", 0, 42, 42), ("consent.events", 2, 0, 0)]) == []


def test_a_partition_that_moved_away_and_back_starts_afresh() -> None:
    watch = StallWatch(stall_s=20)
    watch.stalled(0, [("access.events", 2, 30, 5)])
    watch.stalled(10, [])  # revoked in a rebalance
    assert watch.stalled(25, [("access.events", 2, 30, 5)]) == []
    assert watch.stalled(45, [("access.events", 2, 30, 5)]) == [("access.events", 2)]
