"""Read-your-log: let a command wait until a projection has applied
everything its topics held when the command arrived.

A command that decides on a projection (records' view of identity and
consent events, consent's decision view) must see a patient registered, a
consent granted or a key revoked a moment ago. ``LogSync.sync`` asks Kafka
for the log ends *now* and waits until the projection's applied positions
reach them, or fails with DependencyUnavailable when it cannot say in time.

The projection owns the reading; this only keeps what sync needs: the
positions it applied, the partitions it watches and the client that asks
the log ends. That client is the reader's ``PositionedConsumer.ends_client``,
a second connection beside the reading one: a broker answers one request per
connection at a time, so on the reading connection a ListOffsets would wait
behind the long-polling fetch.
Concurrent commands share one ask (runtime/coalesce.FreshAsk), never one
begun before they called.
"""

from __future__ import annotations

import asyncio
import time
from typing import Iterable, Mapping, Protocol

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from medledger.runtime.coalesce import FreshAsk
from medledger.runtime.errors import DependencyUnavailable
from medledger.runtime.positions import Position


class LogEnds(Protocol):
    """What asks the log ends: a PositionedConsumer's ends client in service."""

    async def end_offsets(self, partitions: list[TopicPartition]) -> Mapping[TopicPartition, int]: ...


def by_partition(positions: Mapping[Position, int]) -> dict[TopicPartition, int]:
    """PositionedConsumer's (topic, partition) keys as the TopicPartitions Kafka's log ends use."""
    return {TopicPartition(topic, partition): at for (topic, partition), at in positions.items()}


class LogSync:
    """A projection's read-your-log state; it calls ``attach``/``detach``
    around its run, ``watch`` as partitions are found and ``advanced`` after
    each applied fetch, and its commands call ``sync``."""

    def __init__(self, reader: str, follows: str) -> None:
        """reader and follows word the errors: "{reader} did not catch up
        with {follows} in time" (e.g. "the records projection", "identity
        and consent events")."""
        self.reader = reader
        self.follows = follows
        self._positions: dict[TopicPartition, int] = {}
        self._watched: list[TopicPartition] = []
        self._client: LogEnds | None = None
        self._log_ends = FreshAsk(self._ask_log_ends)  # concurrent commands share one ask
        self._advanced = asyncio.Event()  # replaced on each advance; waiters hold the old one

    @property
    def positions(self) -> Mapping[TopicPartition, int]:
        """The next offset to apply per partition (everything before it is applied)."""
        return self._positions

    @property
    def watched(self) -> list[TopicPartition]:
        """The partitions whose log ends sync waits for."""
        return self._watched

    def attach(self, client: LogEnds) -> None:
        """The projection runs: sync may ask ``client`` for log ends."""
        self._client = client

    def detach(self) -> None:
        """The projection stopped (its run's finally): sync fails until it runs again."""
        self._client = None

    def watch(self, partitions: Iterable[TopicPartition]) -> None:
        """The partitions the projection reads now (they grow when topics do)."""
        self._watched = sorted(partitions)

    def advanced(self, positions: Mapping[TopicPartition, int]) -> None:
        """The projection applied everything before these positions (partitions
        not named keep theirs); wakes every sync waiting, to look again."""
        self._positions.update(positions)
        advanced, self._advanced = self._advanced, asyncio.Event()
        advanced.set()

    async def _ask_log_ends(self) -> dict[TopicPartition, int]:
        if self._client is None:
            raise DependencyUnavailable(f"{self.reader} is not running")
        return dict(await self._client.end_offsets(self._watched))

    async def sync(self, timeout: float) -> None:
        """Wait until every record on the watched partitions now is applied;
        DependencyUnavailable if the projection is not running, Kafka does
        not answer, or catching up takes longer than timeout."""
        if self._client is None or not self._watched:
            raise DependencyUnavailable(f"{self.reader} is not running yet")
        try:
            ends = await asyncio.wait_for(self._log_ends(), timeout)
        except (KafkaError, asyncio.TimeoutError) as exc:
            raise DependencyUnavailable(f"Kafka unavailable: {exc!r}") from None
        deadline = time.monotonic() + timeout
        while any(self._positions.get(tp, 0) < end for tp, end in ends.items()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DependencyUnavailable(f"{self.reader} did not catch up with {self.follows} in time")
            try:
                await asyncio.wait_for(self._advanced.wait(), remaining)
            except asyncio.TimeoutError:
                pass
