"""LogSync: a command's sync waits until the projection applied the log ends
asked after it called, and fails closed otherwise (runtime/log_sync.py)."""

from __future__ import annotations

import asyncio
from typing import Mapping

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from medledger.runtime.errors import DependencyUnavailable
from medledger.runtime.log_sync import LogSync, by_partition

A = TopicPartition("consent.events", 0)
B = TopicPartition("identity.events", 1)


class Log:
    """Log ends the test sets; remembers which partitions each ask named.
    With ``gated``, asks answer only once the test sets ``release``."""

    def __init__(self, ends: Mapping[TopicPartition, int], gated: bool = False) -> None:
        self.ends = dict(ends)
        self.asked: list[list[TopicPartition]] = []
        self.error: Exception | None = None
        self.release = asyncio.Event()
        if not gated:
            self.release.set()

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        self.asked.append(list(partitions))
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return {tp: self.ends[tp] for tp in partitions}


def running(log: Log, positions: Mapping[TopicPartition, int]) -> LogSync:
    sync = LogSync("the test projection", "the test topics")
    sync.advanced(positions)
    sync.watch([B, A])
    sync.attach(log)
    return sync


async def _waiting(task: asyncio.Future[None]) -> None:
    """Let the task ask and start waiting; it must not have finished."""
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done(), task


async def test_sync_returns_at_once_when_positions_reach_the_ends() -> None:
    log = Log({A: 3, B: 7})
    sync = running(log, {A: 3, B: 8})
    await asyncio.wait_for(sync.sync(5.0), 0.5)  # far below its own timeout
    assert log.asked == [[A, B]]  # the watched partitions, sorted


async def test_sync_waits_until_advanced_reaches_the_ends() -> None:
    log = Log({A: 3, B: 7})
    sync = running(log, {A: 0, B: 0})
    waiter = asyncio.ensure_future(sync.sync(5.0))
    await _waiting(waiter)
    sync.advanced({A: 3})  # one partition caught up, the other still behind
    await _waiting(waiter)
    sync.advanced({B: 7})
    await asyncio.wait_for(waiter, 0.5)
    assert sync.positions == {A: 3, B: 7}  # advancing one partition kept the other's


async def test_sync_compares_with_the_ends_asked_after_it_was_called() -> None:
    log = Log({A: 3, B: 0})
    sync = running(log, {A: 3, B: 0})
    await sync.sync(1.0)
    log.ends[A] = 4  # an event lands after that sync
    waiter = asyncio.ensure_future(sync.sync(5.0))
    await _waiting(waiter)
    sync.advanced({A: 4})
    await asyncio.wait_for(waiter, 0.5)


async def test_sync_times_out_when_the_projection_never_catches_up() -> None:
    sync = running(Log({A: 3, B: 7}), {A: 3, B: 6})
    with pytest.raises(DependencyUnavailable, match="the test projection did not catch up with the test topics in time"):
        await asyncio.wait_for(sync.sync(0.05), 2)


async def test_an_advance_short_of_the_ends_does_not_end_the_wait() -> None:
    sync = running(Log({A: 3, B: 7}), {A: 0, B: 0})
    waiter = asyncio.ensure_future(sync.sync(0.1))
    await _waiting(waiter)
    sync.advanced({A: 3, B: 6})
    with pytest.raises(DependencyUnavailable, match="did not catch up"):
        await asyncio.wait_for(waiter, 2)


async def test_not_running_fails_until_attached_and_watching() -> None:
    log = Log({A: 0})
    sync = LogSync("the test projection", "the test topics")
    with pytest.raises(DependencyUnavailable, match="the test projection is not running yet"):
        await sync.sync(1.0)
    sync.attach(log)  # a client, but no partitions found yet
    with pytest.raises(DependencyUnavailable, match="is not running yet"):
        await sync.sync(1.0)
    sync.watch([A])
    await sync.sync(1.0)
    sync.detach()  # the projection's run ended
    with pytest.raises(DependencyUnavailable, match="is not running yet"):
        await sync.sync(1.0)
    assert log.asked == [[A]]


async def test_a_kafka_error_of_the_ask_is_dependency_unavailable() -> None:
    log = Log({A: 0, B: 0})
    log.error = KafkaConnectionError("broker away")
    sync = running(log, {A: 0, B: 0})
    with pytest.raises(DependencyUnavailable, match="^Kafka unavailable: .*broker away"):
        await sync.sync(1.0)
    log.error = None  # the next call asks again
    await sync.sync(1.0)
    assert len(log.asked) == 2


async def test_an_ask_that_does_not_answer_in_time_is_dependency_unavailable() -> None:
    silent = Log({A: 0, B: 0}, gated=True)
    sync = running(silent, {A: 0, B: 0})
    with pytest.raises(DependencyUnavailable, match="^Kafka unavailable: "):
        await asyncio.wait_for(sync.sync(0.05), 2)
    silent.release.set()  # the ask still in flight answers the next caller
    await asyncio.wait_for(sync.sync(1.0), 0.5)


def test_by_partition_keys_positions_as_kafka_keys_log_ends() -> None:
    keyed = by_partition({("consent.events", 0): 3, ("identity.events", 1): 7})
    assert keyed == {A: 3, B: 7}
    assert all(type(tp) is TopicPartition for tp in keyed)


async def test_concurrent_syncs_share_one_log_end_ask() -> None:
    log = Log({A: 2, B: 0}, gated=True)
    sync = running(log, {A: 2, B: 0})
    first = asyncio.ensure_future(sync.sync(1.0))
    await _waiting(first)
    rest = [asyncio.ensure_future(sync.sync(1.0)) for _ in range(5)]  # arrive while the first ask is out
    await asyncio.sleep(0)
    log.release.set()
    await asyncio.wait_for(asyncio.gather(first, *rest), 0.5)
    assert len(log.asked) == 2  # the first caller's ask, then one for all who came during it
