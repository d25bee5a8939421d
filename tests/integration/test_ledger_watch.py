"""WatchCheckpoints is public, so it must be bounded (issue #9, item 2): a cap
on concurrent streams per process, and one database poll shared by every
watcher rather than one per stream."""

from __future__ import annotations

from typing import Callable, Iterator

import grpc

from medledger.runtime.settings import Topics
from medledger.testing.ledger import produce, sample_events, stub
from medledger.testing.metrics import scrape, value
from medledger.testing.stack import ServiceProcess, wait_until
from medledger.v1 import ledger_pb2

CAP = 20


def _sizes_until(stream: Iterator[ledger_pb2.Checkpoint], size: int) -> list[int]:
    seen = []
    for checkpoint in stream:
        seen.append(checkpoint.tree_size)
        if checkpoint.tree_size >= size:
            return seen
    raise AssertionError(f"stream ended before a checkpoint of size {size}: {seen}")


def _work(ledger_proc: ServiceProcess) -> tuple[float, float]:
    """(database polls for watchers, sequencing commits that woke them) so far."""
    samples = scrape(ledger_proc.metrics_url)
    polls = value(samples, "medledger_ledger_watch_polls_total")
    wakeups = value(samples, "medledger_ledger_batch_records_count") + value(
        samples, "medledger_ledger_checkpoints_signed_total"
    )
    return polls, wakeups


async def test_watchers_are_capped_and_share_one_database_poll(
    spawn: Callable[..., ServiceProcess], topics: Topics
) -> None:
    # A poll interval far longer than the test: every poll that happens was
    # caused by this process committing, so polls can be counted exactly.
    ledger_proc = spawn("ledger", MEDLEDGER_LEDGER_MAX_WATCHERS=str(CAP), MEDLEDGER_LEDGER_WATCH_POLL_MS="600000")
    ledger_proc.wait_serving()
    channel, ledger = stub(ledger_proc.address)
    with channel:
        streams = [ledger.WatchCheckpoints(ledger_pb2.WatchCheckpointsRequest(), timeout=120) for _ in range(CAP)]
        assert [next(s).tree_size for s in streams] == [0] * CAP

        refused = ledger.WatchCheckpoints(ledger_pb2.WatchCheckpointsRequest(), timeout=30)
        try:
            next(refused)
            raise AssertionError("a stream beyond the cap was accepted")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            assert "MEDLEDGER_LEDGER_MAX_WATCHERS" in str(exc.details())

        polls_before, wakeups_before = _work(ledger_proc)
        await produce(sample_events(5, topics))
        # every admitted stream keeps receiving, in order, up to the new checkpoint
        for s in streams:
            sizes = _sizes_until(s, 5)
            assert sizes == sorted(sizes) and sizes[-1] == 5
        polls_after, wakeups_after = _work(ledger_proc)
        polls = polls_after - polls_before
        # One read per wake-up of the shared poller, however many watch: twenty
        # watchers polling on their own would need at least twenty.
        assert 1 <= polls <= wakeups_after - wakeups_before + 1, (polls, wakeups_after - wakeups_before)
        assert polls < CAP

        # a watcher that leaves frees its place
        streams.pop().cancel()
        wait_until(lambda: value(scrape(ledger_proc.metrics_url), "medledger_ledger_watch_streams") == CAP - 1,
                   30, what="the cancelled stream to be released")
        newcomer = ledger.WatchCheckpoints(ledger_pb2.WatchCheckpointsRequest(), timeout=60)
        assert next(newcomer).tree_size == 5
        newcomer.cancel()
        for s in streams:
            s.cancel()
        assert ledger.GetCheckpoint(ledger_pb2.GetCheckpointRequest()).tree_size == 5
