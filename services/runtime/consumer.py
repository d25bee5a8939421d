"""The one positioned consumer every service reads Kafka with
(docs/architecture.md, Consumers and positions).

No consumer groups: a projection, the ledger's sequencer and the identity
relay each need *every* partition of their topics, at positions they store
themselves — in PostgreSQL, in the same transaction as the change a record
caused (the tracking-row pattern), or in memory for an in-memory projection.
So this consumer assigns all partitions and seeks to the caller's positions.

Partitions are discovered through the admin client's public metadata call
and checked again every ``refresh_partitions_s``: a partition an operator
adds later is read from offset 0 without a restart.

Delivered values are raw bytes; :meth:`PositionedConsumer.envelopes` also
verifies each one (docs/architecture.md, Event signing), so a forged record
reaches no projection.

Log ends are asked on a connection of their own (:meth:`PositionedConsumer.ends_client`):
a broker answers one request per connection at a time, and aiokafka keeps a
fetch long-polling on the reading connection, so a ListOffsets sent there
waits up to the fetch's ``fetch_max_wait_ms`` (half a second for
WAKE_PER_RECORD) before the broker even reads it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Collection, Mapping, Sequence, TypedDict

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from medledger.runtime.envelope import EnvelopeVerifier, UnauthenticatedEvent
from medledger.runtime.errors import DependencyUnavailable
from medledger.runtime.kafka import make_consumer
from medledger.runtime.metrics import ConsumerLag
from medledger.runtime.positions import Delivery, Position
from medledger.runtime.transport import kafka_security
from medledger.v1 import events_pb2

log = logging.getLogger(__name__)

# Fetch options for a reader nothing waits on (docs/architecture.md, Consumers
# and positions): the broker holds each fetch until 1 MiB or 250 ms have
# gathered, instead of waking the reader (and its commit) for every record.
class FetchOptions(TypedDict):
    """How long the broker may hold a fetch, and what it waits to gather."""

    fetch_max_wait_ms: int
    fetch_min_bytes: int


GATHERED_FETCH: FetchOptions = {"fetch_max_wait_ms": 250, "fetch_min_bytes": 1024 * 1024}
# Fetch options for a reader a command waits on (a projection that commands
# sync() on, a revocation feed): the broker answers as soon as one record
# lands (fetch.min.bytes 1), so the wait only bounds how often an idle reader
# asks again. Kafka's own default, 500 ms: each empty answer costs the broker
# about a millisecond of CPU on a two-core machine (docs/benchmarks.md).
WAKE_PER_RECORD: FetchOptions = {"fetch_max_wait_ms": 500, "fetch_min_bytes": 1}
# From this many records a batch's envelopes are opened on a worker thread
# (``opened``): the native batch check releases the GIL, so the event loop (a
# service's rpcs, the ledger's sequencing) runs on while thousands of
# signatures are checked. Below it the hand-over would cost more than the
# check: one signature takes ~0.1 ms, a thread's wake-up here up to ~0.5 ms.
VERIFY_OFF_LOOP_AT = 64


@dataclass(frozen=True)
class Opened:
    """A delivery whose envelope verified."""

    delivery: Delivery
    envelope: events_pb2.EventEnvelope


class PositionedConsumer:
    def __init__(
        self, bootstrap: str, topics: Sequence[str], *, refresh_partitions_s: float = 5.0, reader: str = "unnamed",
        **options: object,
    ) -> None:
        """reader: what reads, for the lag metric (``ledger sequencer``, ``consent projection``)."""
        self.bootstrap = bootstrap
        self.topics = tuple(topics)
        self.refresh_partitions_s = refresh_partitions_s
        self.options = options
        self._consumer: AIOKafkaConsumer | None = None
        self._ends: AIOKafkaConsumer | None = None  # asks log ends; started on first use
        self._ends_starting = asyncio.Lock()  # two first uses at once start one client
        self._admin: AIOKafkaAdminClient | None = None
        self._assigned: frozenset[TopicPartition] = frozenset()
        self._positions: dict[Position, int] = {}
        self._next_refresh = 0.0
        self._lag = ConsumerLag(reader)

    async def __aenter__(self) -> PositionedConsumer:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self, positions: Mapping[Position, int] | None = None) -> PositionedConsumer:
        """Connect, assign every partition and seek to ``positions`` (offset 0
        where none is given). DependencyUnavailable when Kafka or a topic is missing."""
        self._positions = dict(positions or {})
        self._consumer = make_consumer(self.bootstrap, group_id=None, **self.options)
        self._admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap, request_timeout_ms=15000, **kafka_security()
        )
        try:
            await self._consumer.start()
            await self._admin.start()
            await self._refresh()
        except (KafkaError, OSError) as exc:
            await self.stop()
            raise DependencyUnavailable(f"Kafka unavailable: {exc!r}") from exc
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        consumer, admin, self._consumer, self._admin = self._consumer, self._admin, None, None
        ends, self._ends = self._ends, None
        self._lag.forget()
        if consumer is not None:
            await consumer.stop()
        if ends is not None:
            await ends.stop()
        if admin is not None:
            await admin.close()

    @property
    def consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise DependencyUnavailable("the consumer is not started")
        return self._consumer

    @property
    def partitions(self) -> frozenset[TopicPartition]:
        return self._assigned

    async def _discover(self) -> frozenset[TopicPartition]:
        assert self._admin is not None
        found: set[TopicPartition] = set()
        described = {t["topic"]: t for t in await self._admin.describe_topics(list(self.topics))}
        for topic in self.topics:
            info = described.get(topic)
            if info is None or info["error_code"] != 0 or not info["partitions"]:
                raise DependencyUnavailable(f"topic {topic} does not exist; run `medledger topics ensure`")
            found.update(TopicPartition(topic, p["partition"]) for p in info["partitions"])
        return frozenset(found)

    async def _refresh(self) -> None:
        self._next_refresh = time.monotonic() + self.refresh_partitions_s
        found = await self._discover()
        if found == self._assigned:
            return
        consumer = self.consumer
        added = found - self._assigned
        if self._assigned:
            log.info("new partitions", extra={"partitions": ",".join(f"{t.topic}[{t.partition}]" for t in added)})
            for tp in self._assigned:  # assign() forgets positions; keep the ones already read
                self._positions[(tp.topic, tp.partition)] = await consumer.position(tp)
        consumer.assign(sorted(found))
        for tp in found:
            consumer.seek(tp, self._positions.get((tp.topic, tp.partition), 0))
        self._assigned = found

    async def fetch(self, timeout_ms: int = 200, max_records: int | None = None) -> list[Delivery]:
        """The next records, grouped by partition in (topic, partition) order,
        each partition's in offset order."""
        if time.monotonic() >= self._next_refresh:
            try:
                await self._refresh()
            except (KafkaError, DependencyUnavailable) as exc:
                log.warning("could not refresh partitions; reading the known ones", extra={"error": repr(exc)})
        batch = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        out: list[Delivery] = []
        for tp in sorted(batch, key=lambda t: (t.topic, t.partition)):
            records = batch[tp]
            out += [Delivery(tp.topic, tp.partition, r.offset, r.value) for r in records]
            if records:
                self._positions[(tp.topic, tp.partition)] = records[-1].offset + 1
        for (topic, partition), end in self.log_ends().items():
            self._lag.observe(topic, partition, end, self._positions.get((topic, partition), 0))
        return out

    def log_ends(self) -> dict[Position, int]:
        """Each partition's end as the last fetch saw it (partitions not fetched
        yet are missing). No request: for metrics, not for freshness."""
        consumer = self.consumer
        ends = {(tp.topic, tp.partition): consumer.highwater(tp) for tp in self._assigned}
        return {position: end for position, end in ends.items() if end is not None}

    def envelopes(self, deliveries: Sequence[Delivery], verifier: EnvelopeVerifier,
                  types: Collection[str] | None = None) -> list[Opened]:
        """The deliveries whose envelopes verify (one batch verification for
        all of them); each other one is logged and skipped (its position still
        advances: it will never verify).

        ``types``: a reader that acts on only these event types gets only
        those; the others are skipped before their signatures are checked.
        Skipping cannot make a forgery count (a record claiming a wanted type
        is verified like any other, and an ignored one changes nothing), and
        the ledger, which verifies every record, is where forgeries are
        reported (ledger.rejected)."""
        opened: list[Opened] = []
        for d, env in zip(deliveries, verifier.open_batch([(d.topic, d.value) for d in deliveries], types), strict=True):
            if env is None:
                continue  # a type this reader ignores
            if isinstance(env, UnauthenticatedEvent):
                log.warning("ignored an unauthenticated record", extra={
                    "topic": d.topic, "partition": d.partition, "offset": d.offset, "reason": str(env)
                })
            else:
                opened.append(Opened(d, env))
        return opened

    async def opened(self, deliveries: Sequence[Delivery], verifier: EnvelopeVerifier,
                     types: Collection[str] | None = None) -> list[Opened]:
        """``envelopes``, on a worker thread for a batch of VERIFY_OFF_LOOP_AT
        records or more, so a burst (a flood of identity events, a catch-up
        after a restart) does not hold the event loop for its whole check."""
        if len(deliveries) < VERIFY_OFF_LOOP_AT:
            return self.envelopes(deliveries, verifier, types)
        return await asyncio.to_thread(self.envelopes, deliveries, verifier, types)

    async def positions(self) -> dict[Position, int]:
        """The next offset to read per assigned partition (past transaction
        markers too, unlike the last delivered offset)."""
        consumer = self.consumer
        return {(tp.topic, tp.partition): await consumer.position(tp) for tp in self._assigned}

    async def ends_client(self) -> AIOKafkaConsumer:
        """The client that asks log ends beside the reading connection (see the
        module's docstring), for readers that ask them themselves (LogSync, a
        freshness probe). Started on first use, stopped with this consumer."""
        self.consumer  # DependencyUnavailable unless started
        async with self._ends_starting:
            if self._ends is None:
                ends = make_consumer(self.bootstrap, group_id=None)
                try:
                    await ends.start()
                except (KafkaError, OSError) as exc:
                    await ends.stop()
                    raise DependencyUnavailable(f"Kafka unavailable: {exc!r}") from exc
                self._ends = ends
            return self._ends

    async def end_offsets(self, topics: Sequence[str] | None = None) -> dict[TopicPartition, int]:
        """The log end of each assigned partition (of ``topics`` only, if given), now."""
        wanted = [tp for tp in self._assigned if topics is None or tp.topic in topics]
        return dict(await (await self.ends_client()).end_offsets(wanted))

    async def behind(self, ends: Mapping[TopicPartition, int]) -> bool:
        """Whether some partition's position is still before the given end."""
        for tp, end in ends.items():
            if await self.consumer.position(tp) < end:
                return True
        return False
