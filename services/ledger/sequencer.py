"""The sequencer: Kafka event topics in, one gap-free Merkle-chained log out.

Exactly one sequencer is active per ledger database: it holds a PostgreSQL
advisory lock on the very connection it writes with, so if its process or
connection dies the lock is released and a standby (polling for the lock)
takes over, while the dead one cannot commit anything more. On becoming
active it rebuilds its state and Kafka positions from the database, so a
restart resumes exactly after the last committed batch: nothing is lost and
nothing is sequenced twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import Callable

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from medledger.ledger import note, store
from medledger.ledger.publisher import Publisher
from medledger.ledger.intake import LogState, SourceRecord, classify, event_ids, plan_batch
from medledger.ledger.settings import LedgerSettings
from medledger.runtime.kafka import make_consumer
from medledger.runtime.leadership import lead_when_possible
from medledger.runtime.retry import keep_running
from medledger.runtime.settings import Topics

log = logging.getLogger(__name__)

SEQUENCER_LOCK = 0x6C656467  # "ledg"


class Sequencer:
    def __init__(
        self,
        settings: LedgerSettings,
        database_url: str,
        bootstrap: str,
        topics: Topics,
        publisher: Publisher | None = None,
        on_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.database_url = database_url
        self.bootstrap = bootstrap
        self.topics = topics
        self.publisher = publisher
        self.on_commit = on_commit
        self.role = "starting"
        self.state: LogState | None = None
        self._last_checkpoint_size = -1
        self._last_checkpoint_at = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Wait for leadership, sequence while leading, retry after any failure."""
        def standby() -> None:
            self.role = "standby"

        async def lead(conn: asyncpg.Connection) -> None:
            log.info("acquired the sequencer lock: this instance sequences")
            await self._lead(conn, stop)

        await keep_running(
            "sequencer",
            lambda: lead_when_possible(
                self.database_url, SEQUENCER_LOCK, stop, lead, self.settings.standby_poll_s, standby
            ),
            stop,
        )

    async def _lead(self, conn: asyncpg.Connection, stop: asyncio.Event) -> None:
        self.state = await store.load_state(conn)
        latest = await store.latest_checkpoint(conn)
        self._last_checkpoint_size = latest.tree_size if latest else -1
        consumer = await self._consumer(self.state)
        self.role = "leader"
        log.info("sequencing", extra={"tree_size": self.state.size})
        leading = asyncio.Event()
        followers = (
            asyncio.create_task(keep_running("publisher", lambda: self.publisher.run(leading), leading))
            if self.publisher
            else None
        )
        try:
            await self._checkpoint_if_due(conn, force=True)
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=50, max_records=self.settings.batch_max_records)
                if batch:
                    await self._sequence(conn, batch)
                await self._checkpoint_if_due(conn)
        finally:
            self.role = "stopping"
            leading.set()
            if followers:
                followers.cancel()
                await asyncio.gather(followers, return_exceptions=True)
            await consumer.stop()

    async def _consumer(self, state: LogState) -> AIOKafkaConsumer:
        consumer = make_consumer(
            self.bootstrap, group_id=None, fetch_max_wait_ms=20, max_partition_fetch_bytes=8 * 1024 * 1024
        )
        await consumer.start()
        try:
            partitions: list[TopicPartition] = []
            for topic in self.topics.event_topics:
                found = await _partitions(consumer, topic)
                partitions += [TopicPartition(topic, p) for p in sorted(found)]
            consumer.assign(partitions)
            for tp in partitions:
                consumer.seek(tp, state.offsets.get((tp.topic, tp.partition), 0))
        except BaseException:
            await consumer.stop()
            raise
        return consumer

    async def _sequence(self, conn: asyncpg.Connection, batch: dict[TopicPartition, list]) -> None:
        assert self.state is not None
        records = [
            SourceRecord(tp.topic, tp.partition, r.offset, r.value)
            for tp in sorted(batch, key=lambda t: (t.topic, t.partition))
            for r in batch[tp]
        ]
        verdicts = classify(records)
        known = await store.known_event_ids(conn, event_ids(verdicts))
        plan = plan_batch(self.state, records, verdicts, known)
        if not (plan.entries or plan.rejections or plan.offsets):
            return
        await store.commit_batch(conn, plan, datetime.now(timezone.utc))
        if plan.rejections:
            log.warning("rejected records", extra={"count": len(plan.rejections), "first": plan.rejections[0].reason})
        if plan.duplicates:
            log.info("skipped duplicate events", extra={"count": plan.duplicates})
        self._committed()

    async def _checkpoint_if_due(self, conn: asyncpg.Connection, force: bool = False) -> None:
        assert self.state is not None
        size = self.state.size
        if size <= self._last_checkpoint_size and not (force and self._last_checkpoint_size < 0):
            return
        now = time.monotonic()
        if not force and now - self._last_checkpoint_at < self.settings.checkpoint_interval_s:
            return
        root = self.state.tree.root()
        body = note.checkpoint_body(note.Checkpoint(self.settings.origin, size, root))
        signed = self.settings.signer.sign(body)
        await store.insert_checkpoint(
            conn, store.StoredCheckpoint(size, root, self.state.chain_head, signed, datetime.now(timezone.utc))
        )
        self._last_checkpoint_size = size
        self._last_checkpoint_at = now
        self._committed()

    def _committed(self) -> None:
        if self.publisher:
            self.publisher.wake.set()
        self.on_commit()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """Partition ids of a topic; the topics must exist (created at start-up)."""
    for _ in range(50):
        await consumer._client.force_metadata_update()  # noqa: SLF001 - aiokafka exposes no public call
        consumer._client.add_topic(topic)  # noqa: SLF001
        found = consumer.partitions_for_topic(topic)
        if found:
            return set(found)
        await asyncio.sleep(0.2)
    raise RuntimeError(f"topic {topic} does not exist; run `medledger topics ensure`")

