"""The transactional outbox every service publishes its command events through
(docs/architecture.md, Outbox).

A command writes its state change and its signed envelopes (table ``outbox``)
in one transaction; nothing reaches Kafka before that commit, so an event is
never published for a change that did not happen. One relay per database
(the holder of a PostgreSQL advisory lock; other replicas stand by) publishes
the rows in order with the idempotent producer (acks=all) and marks each with
the partition and offset the broker gave it.

On becoming active the relay *reconciles* first: it reads its topic from the
first offset the database does not account for to the end, and for each
verified record

* whose event_id is an unpublished outbox row: the previous relay published it
  and died before saying so; it is marked published, not sent again;
* otherwise: handed to the service's ``apply`` hook (identity rebuilds its
  projection from the topic this way; a hook returns how many it applied).

So an event is never lost (it is in the database before anyone hears of it)
and never written twice (after a crash the topic itself says what got there).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable, Sequence, TypeAlias

import asyncpg
from aiokafka import AIOKafkaProducer

from medledger.runtime.consumer import Opened, PositionedConsumer
from medledger.runtime.envelope import EnvelopeVerifier, EventSigner
from medledger.runtime.leadership import lead_when_possible
from medledger.runtime.lru import Lru
from medledger.runtime.metrics import OutboxBacklog, track_leadership
from medledger.runtime.retry import keep_running
from medledger.v1 import events_pb2

log = logging.getLogger(__name__)

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
ApplyHook = Callable[[Conn, Opened], Awaitable[int]]
PositionsHook = Callable[[Conn, str], Awaitable[dict[int, int]]]
BATCH = 500
RECENT_IDS = 10_000  # ids of recently published events kept in memory, per relay
NOTIFY_PAYLOAD_BYTES = 7_900  # PostgreSQL refuses a notification payload of 8,000 bytes or more

# The table, created by each service's own migration:
#   outbox(seq bigserial PRIMARY KEY, event_id text UNIQUE, aggregate_id text,
#          envelope bytea, created_at timestamptz, published_at timestamptz,
#          partition integer, "offset" bigint)


def notification_payloads(placed: Sequence[tuple[str, int, int]]) -> list[str]:
    """The event ids as comma-separated payloads, each under PostgreSQL's limit."""
    payloads: list[str] = []
    current: list[str] = []
    size = 0
    for event_id, _, _ in placed:
        if current and size + len(event_id) + 1 > NOTIFY_PAYLOAD_BYTES:
            payloads.append(",".join(current))
            current, size = [], 0
        current.append(event_id)
        size += len(event_id) + 1
    if current:
        payloads.append(",".join(current))
    return payloads


@dataclass(frozen=True)
class QueuedEvent:
    """An envelope sealed for an outbox, for a command that inserts it with
    its own statement (the change and its event in one round trip)."""

    table: str
    channel: str
    event_id: str
    aggregate_id: str
    value: bytes  # the exact bytes that will be published

    def queue_clause(self, source: str, first: int) -> str:
        """A data-modifying CTE ``queued``: the outbox row, inserted (and the
        relay notified, at commit) only if ``source`` yields a row; it takes
        the parameters ``args()`` from $first on."""
        return (f"queued AS (INSERT INTO {self.table} (event_id, aggregate_id, envelope)"
                f" SELECT ${first}, ${first + 1}, ${first + 2} FROM {source} RETURNING pg_notify(${first + 3}, ''))")

    def args(self) -> tuple[str, str, bytes, str]:
        return self.event_id, self.aggregate_id, self.value, self.channel


class Outbox:
    """The outbox rows of one service database, for one topic."""

    def __init__(self, topic: str, signer: EventSigner, channel: str, table: str = "outbox") -> None:
        """table: a service publishing to two topics keeps one outbox table
        per topic (records: records.events and access.events)."""
        self.topic = topic
        self.signer = signer
        self.channel = channel  # LISTEN/NOTIFY channel that wakes the relay
        self.table = table

    def seal(self, env: events_pb2.EventEnvelope) -> QueuedEvent:
        """Sign the envelope, for a command's own statement to queue."""
        return QueuedEvent(self.table, self.channel, env.event_id, env.aggregate_id, self.signer.seal(env))

    async def enqueue(self, conn: Conn, env: events_pb2.EventEnvelope) -> bytes:
        """Sign the envelope and queue it; must run inside the command's
        transaction. Returns the exact bytes that will be published."""
        queued = self.seal(env)
        # one round trip: the row, then the notification (sent at commit)
        await conn.execute(f"WITH one AS (SELECT 1), {queued.queue_clause('one', 1)} SELECT count(*) FROM queued",
                           *queued.args())
        return queued.value

    async def unpublished(self, conn: Conn, limit: int) -> list[asyncpg.Record]:
        return list(await conn.fetch(
            f"SELECT seq, event_id, aggregate_id, envelope FROM {self.table} WHERE published_at IS NULL"
            " ORDER BY seq LIMIT $1",
            limit,
        ))

    @property
    def published_channel(self) -> str:
        """LISTEN/NOTIFY channel on which the leading relay names the events
        it marked published, for standby replicas' waiting commands."""
        return f"{self.channel}_published"

    async def mark_published(self, conn: Conn, placed: Sequence[tuple[str, int, int]]) -> None:
        """Record (event_id, partition, offset) of envelopes the broker
        acknowledged, in one statement that also names them on
        ``published_channel`` (delivered when it commits)."""
        await conn.execute(
            f'WITH marked AS (UPDATE {self.table} AS o SET published_at = now(), partition = p.partition,'
            ' "offset" = p.at FROM unnest($1::text[], $2::int[], $3::bigint[]) AS p(event_id, partition, at)'
            " WHERE o.event_id = p.event_id AND o.published_at IS NULL RETURNING 1)"
            " SELECT pg_notify($4, ids) FROM unnest($5::text[]) AS ids",
            [event_id for event_id, _, _ in placed], [partition for _, partition, _ in placed],
            [offset for _, _, offset in placed], self.published_channel, notification_payloads(placed),
        )

    async def published(self, conn: Conn, event_ids: Sequence[str]) -> bool:
        pending = await conn.fetchval(
            f"SELECT count(*) FROM {self.table} WHERE event_id = ANY($1::text[]) AND published_at IS NULL",
            list(event_ids),
        )
        return bool(pending == 0)

    async def pending_event_ids(self, conn: Conn) -> set[str]:
        return {
            r["event_id"] for r in await conn.fetch(f"SELECT event_id FROM {self.table} WHERE published_at IS NULL")
        }

    async def positions(self, conn: Conn) -> dict[int, int]:
        """Per partition, the offset after the last row the relay placed there."""
        rows = await conn.fetch(
            f'SELECT partition, max("offset") + 1 AS next FROM {self.table} WHERE "offset" IS NOT NULL'
            " GROUP BY partition"
        )
        return {r["partition"]: r["next"] for r in rows}


class OutboxRelay:
    """The one active publisher of an outbox (see the module docstring)."""

    def __init__(
        self,
        outbox: Outbox,
        database_url: str,
        producer: AIOKafkaProducer,
        bootstrap: str,
        verifier: EnvelopeVerifier,
        lock_id: int,
        *,
        apply: ApplyHook | None = None,
        known_positions: PositionsHook | None = None,
        on_lead: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
        standby_poll_s: float = 0.5,
        linger_s: float = 0.0,
        name: str = "outbox relay",
    ) -> None:
        """linger_s: after a quiet spell, how long to let rows gather before
        publishing the first of them. 0 for outboxes whose commands wait for
        publication; a few milliseconds for a steady trickle nothing waits
        on (records' disclosures), so one round of three round trips and a
        commit carries many events instead of one each."""
        self.outbox = outbox
        self.database_url = database_url
        self.producer = producer
        self.bootstrap = bootstrap
        self.verifier = verifier
        self.lock_id = lock_id
        self.apply = apply
        self.known_positions = known_positions
        self.on_lead = on_lead
        self.standby_poll_s = standby_poll_s
        self.linger_s = linger_s
        self.name = name
        self.role = "starting"
        self._wake = asyncio.Event()
        self._published = asyncio.Condition()
        # Event ids this relay placed recently, newest last: lets wait_published
        # answer from memory instead of one query per waiter per batch.
        self._recent: Lru[bool] = Lru(RECENT_IDS)
        self._hearing = False  # listening to the leader's notifications of what it published
        self._waking: set[asyncio.Future[None]] = set()
        self.backlog = OutboxBacklog(outbox.topic, table=outbox.table)
        track_leadership(name, lambda: self.role == "leader")

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(keep_running(self.name, lambda: self._lead_when_possible(stop), stop),
                             keep_running(f"{self.name} listener", lambda: self._hear_publications(stop), stop))

    async def _hear_publications(self, stop: asyncio.Event) -> None:
        """While another replica leads, learn from its notifications which
        events reached the topic, so this replica's commands waiting on them
        are answered at once rather than by polling the database."""
        conn = await asyncpg.connect(self.database_url, timeout=5)
        try:
            await conn.add_listener(self.outbox.published_channel, self._heard)
            self._hearing = True
            await stop.wait()
        finally:
            self._hearing = False
            await conn.close(timeout=2)

    def _heard(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        if self.role == "leader" or not payload:
            return  # a leader already knows what it published
        self._remember(payload.split(","))
        waking = asyncio.ensure_future(self._wake_waiters())
        self._waking.add(waking)  # held until done: the loop keeps only weak references to tasks
        waking.add_done_callback(self._waking.discard)

    async def _wake_waiters(self) -> None:
        async with self._published:
            self._published.notify_all()

    async def _lead_when_possible(self, stop: asyncio.Event) -> None:
        def standby() -> None:
            self.role = "standby"

        async def lead(conn: asyncpg.Connection) -> None:
            await conn.add_listener(self.outbox.channel, lambda *_: self._wake.set())
            applied = await self.reconcile(conn)
            log.info(f"{self.name} active", extra={"replayed_events": applied})
            if self.on_lead:
                await self.on_lead(conn)
            self.role = "leader"
            while not stop.is_set():
                published = await self._publish_batch(conn)
                await self.backlog.measure(conn)
                if not published:
                    await self._idle(stop)

        await lead_when_possible(self.database_url, self.lock_id, stop, lead, self.standby_poll_s, standby)

    async def _idle(self, stop: asyncio.Event) -> None:
        self._wake.clear()
        stopping = asyncio.ensure_future(stop.wait())
        woken = asyncio.ensure_future(self._wake.wait())
        await asyncio.wait([stopping, woken], timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
        for task in (stopping, woken):
            task.cancel()
        if self.linger_s and woken.done() and not stop.is_set():
            await asyncio.sleep(self.linger_s)

    async def _publish_batch(self, conn: Conn) -> bool:
        rows = await self.outbox.unpublished(conn, BATCH)
        if not rows:
            return False
        topic = self.outbox.topic
        sends = [await self.producer.send(topic, value=r["envelope"], key=r["aggregate_id"].encode()) for r in rows]
        placed = await asyncio.gather(*sends)
        # On the topic now (acks=all): waiters are told before the rows are
        # marked, which they need not wait for. A relay that dies before
        # marking leaves it to the next one's reconcile, as for any crash.
        self._remember(r["event_id"] for r in rows)
        await self._wake_waiters()
        await self.outbox.mark_published(conn, [(r["event_id"], m.partition, m.offset) for r, m in zip(rows, placed)])
        self.backlog.published.inc(len(rows))
        return True

    @property
    def _hears_publications(self) -> bool:
        return self.role == "leader" or self._hearing

    def _remember(self, event_ids: Iterable[str]) -> None:
        for event_id in event_ids:
            self._recent.put(event_id, True)

    async def wait_published(self, event_ids: Sequence[str], pool: asyncpg.Pool, timeout: float) -> bool:
        """Wait until these events are on the topic (published by whichever
        replica leads), at most timeout seconds; whether they are.

        What was just published is known in memory, so a batch wakes every
        waiter without a query each: from this replica's own relay while it
        leads, from the leader's notifications (``published_channel``) while
        it stands by. The database is asked every 50 ms anyway, and at once
        when neither source is there."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        ask_database = not self._hears_publications
        while True:
            if all(self._recent.get(e) for e in event_ids):
                return True
            if ask_database:
                async with pool.acquire() as conn:
                    if await self.outbox.published(conn, event_ids):
                        return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.warning("events committed but not yet published", extra={"event_ids": ",".join(event_ids)})
                return False
            async with self._published:
                try:
                    await asyncio.wait_for(self._published.wait(), min(remaining, 0.05))
                    ask_database = not self._hears_publications
                except asyncio.TimeoutError:
                    ask_database = True

    async def reconcile(self, conn: Conn) -> int:
        """Bring the database in line with the topic; returns how many events
        the apply hook applied. Idempotent."""
        topic = self.outbox.topic
        start = await self.outbox.positions(conn)
        if self.known_positions:
            for partition, offset in (await self.known_positions(conn, topic)).items():
                start[partition] = max(start.get(partition, 0), offset)
        pending = await self.outbox.pending_event_ids(conn)
        applied = 0
        consumer = PositionedConsumer(
            self.bootstrap, [topic], isolation_level="read_uncommitted", reader=f"{self.name} reconcile"
        )
        await consumer.start({(topic, p): o for p, o in start.items()})
        try:
            ends = await consumer.end_offsets()
            while await consumer.behind(ends):
                records = await consumer.fetch(timeout_ms=1000)
                verified = await consumer.opened(records, self.verifier)
                async with conn.transaction():
                    for opened in verified:
                        applied += await self._reconcile_one(conn, opened, pending)
        finally:
            await consumer.stop()
        return applied

    async def _reconcile_one(self, conn: Conn, opened: Opened, pending: set[str]) -> int:
        event_id = opened.envelope.event_id
        if event_id in pending:
            await self.outbox.mark_published(conn, [(event_id, opened.delivery.partition, opened.delivery.offset)])
            pending.discard(event_id)
            return 0
        return await self.apply(conn, opened) if self.apply else 0
