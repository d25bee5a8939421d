"""The outbox relay: the one writer of identity.events, and the keeper of the
projection's agreement with that topic.

Exactly one relay is active per identity database (a PostgreSQL advisory lock
on the connection it works with; other replicas stand by and still serve).
On becoming active it *reconciles*: it reads every partition of
identity.events from the first offset the database does not account for
(the outbox records where each published envelope landed; the tracking rows
record where each replayed event came from) to the end, and for each record

* whose event_id is an unpublished outbox row: the previous relay published it
  and died before saying so; it is marked published, not sent again;
* whose event_id has no tracking row: it is applied to the projection
  (a database restored from scratch is rebuilt this way);
* otherwise: already reflected, skipped.

Then it publishes the outbox in order (idempotent producer, acks=all) and marks
each row with its partition and offset. So an event is never lost (it is in
the database before anyone hears of it) and never written twice (after a
crash the topic itself says what got there). Demographics and MRN hashes are
not in events: a rebuilt database has identities, keys and memberships.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Sequence

import asyncpg
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord
from google.protobuf.message import DecodeError

from medledger.identity import codec, domain, store
from medledger.runtime.errors import InvalidArgument
from medledger.runtime.kafka import make_consumer
from medledger.runtime.leadership import lead_when_possible
from medledger.runtime.retry import keep_running
from medledger.v1 import events_pb2

log = logging.getLogger(__name__)

RELAY_LOCK = 0x6964656E  # "iden"
BATCH = 500


class Relay:
    def __init__(
        self,
        database_url: str,
        producer: AIOKafkaProducer,
        bootstrap: str,
        topic: str,
        on_lead: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
        standby_poll_s: float = 0.5,
    ) -> None:
        self.database_url = database_url
        self.producer = producer
        self.bootstrap = bootstrap
        self.topic = topic
        self.on_lead = on_lead
        self.standby_poll_s = standby_poll_s
        self.role = "starting"
        self._wake = asyncio.Event()
        self._published = asyncio.Condition()

    async def run(self, stop: asyncio.Event) -> None:
        await keep_running("identity outbox relay", lambda: self._lead_when_possible(stop), stop)

    async def _lead_when_possible(self, stop: asyncio.Event) -> None:
        def standby() -> None:
            self.role = "standby"

        async def lead(conn: asyncpg.Connection) -> None:
            await conn.add_listener(store.OUTBOX_CHANNEL, lambda *_: self._wake.set())
            applied = await reconcile(conn, self.producer, self.bootstrap, self.topic)
            log.info("identity relay active", extra={"replayed_events": applied})
            if self.on_lead:
                await self.on_lead(conn)
            self.role = "leader"
            while not stop.is_set():
                if not await self._publish_batch(conn):
                    await self._idle(stop)

        await lead_when_possible(self.database_url, RELAY_LOCK, stop, lead, self.standby_poll_s, standby)

    async def _idle(self, stop: asyncio.Event) -> None:
        self._wake.clear()
        stopping = asyncio.ensure_future(stop.wait())
        woken = asyncio.ensure_future(self._wake.wait())
        await asyncio.wait([stopping, woken], timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
        for task in (stopping, woken):
            task.cancel()

    async def _publish_batch(self, conn: asyncpg.Connection) -> bool:
        rows = await store.unpublished(conn, BATCH)
        if not rows:
            return False
        sends = [
            await self.producer.send(self.topic, value=r["envelope"], key=r["aggregate_id"].encode()) for r in rows
        ]
        placed = await asyncio.gather(*sends)
        await store.mark_published(conn, [(r["event_id"], m.partition, m.offset) for r, m in zip(rows, placed)])
        async with self._published:
            self._published.notify_all()
        return True

    async def wait_published(self, event_ids: Sequence[str], pool: asyncpg.Pool, timeout: float) -> bool:
        """Wait until these events are on the topic (published by whichever
        replica leads), at most timeout seconds; whether they are."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            async with pool.acquire() as conn:
                if await store.published(conn, event_ids):
                    return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.warning("events committed but not yet published", extra={"event_ids": ",".join(event_ids)})
                return False
            async with self._published:
                try:
                    await asyncio.wait_for(self._published.wait(), min(remaining, 0.05))
                except asyncio.TimeoutError:
                    pass


async def reconcile(conn: asyncpg.Connection, producer: AIOKafkaProducer, bootstrap: str, topic: str) -> int:
    """Bring the database in line with the topic (see the module docstring);
    returns how many events were applied to the projection. Idempotent."""
    partitions = [TopicPartition(topic, p) for p in sorted(await producer.partitions_for(topic))]
    start = await store.known_positions(conn, topic)
    consumer = make_consumer(bootstrap, group_id=None, isolation_level="read_uncommitted")
    await consumer.start()
    applied = 0
    try:
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, start.get(tp.partition, 0))
        pending = await store.pending_event_ids(conn)
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(*partitions, timeout_ms=1000)
            records = [r for tp in sorted(batch, key=lambda t: t.partition) for r in batch[tp]]
            async with conn.transaction():
                for record in records:
                    applied += await _reconcile_record(conn, topic, record, pending)
    finally:
        await consumer.stop()
    return applied


async def _reconcile_record(
    conn: asyncpg.Connection, topic: str, record: "ConsumerRecord[bytes, bytes]", pending: set[str]
) -> int:
    try:
        env = events_pb2.EventEnvelope.FromString(record.value or b"")
    except DecodeError:
        log.error("not an EventEnvelope on the identity topic", extra={"partition": record.partition, "offset": record.offset})
        return 0
    if env.event_id in pending:
        await store.mark_published(conn, [(env.event_id, record.partition, record.offset)])
        pending.discard(env.event_id)
        return 0
    if not await store.mark_applied(conn, env.event_id, topic, record.partition, record.offset):
        return 0
    try:
        event = codec.from_envelope(env)
        if event is None:
            log.warning("skipped an event type this version does not know", extra={"event_type": env.event_type})
            return 0
        state = await store.load(conn, domain.aggregate_of(event), lock=True)
        await store.save(conn, domain.evolve(state, event))
    except (domain.InconsistentEvent, InvalidArgument) as exc:
        log.error("event does not follow the projection; skipped", extra={"event_id": env.event_id, "error": str(exc)})
        return 0
    return 1
