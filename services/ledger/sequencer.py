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
from typing import Callable, TypeAlias

from concurrent.futures import ThreadPoolExecutor

import asyncpg

from medledger.ledger import note, store
from medledger.ledger.metrics import SequencerMetrics
from medledger.ledger.publisher import Publisher
from medledger.ledger.intake import Admitted, LogState, Refused, SourceRecord, classify, event_ids, plan_batch
from medledger.ledger.settings import LedgerSettings
from medledger.ledger.tile_cache import TileCache
from medledger.runtime.consumer import PositionedConsumer
from medledger.runtime.leadership import lead_when_possible
from medledger.runtime.retry import keep_running
from medledger.runtime.settings import Topics

log = logging.getLogger(__name__)

SEQUENCER_LOCK = 0x6C656467  # "ledg"

Verdict: TypeAlias = "Admitted | Refused"
Checked: TypeAlias = "tuple[list[SourceRecord], asyncio.Future[list[Verdict]]]"


async def join_waiting(first: Checked, checked: asyncio.Queue[Checked]) -> tuple[list[SourceRecord], list[Verdict]]:
    """The first checked batch joined, in order, with those already waiting
    behind it: when the loop has fallen behind, one transaction takes them
    all, since a transaction's fixed cost (the duplicate lookup's round trip,
    the commit's WAL flush) is most of a small batch's. Only what waits when
    called is taken, so a steady stream of batches cannot postpone the commit."""
    waiting = checked.qsize()
    records, verdicts = first[0], await first[1]
    for _ in range(waiting):
        more, more_verdicts = checked.get_nowait()
        records, verdicts = records + more, verdicts + await more_verdicts
    return records, verdicts


class Sequencer:
    def __init__(
        self,
        settings: LedgerSettings,
        database_url: str,
        bootstrap: str,
        topics: Topics,
        publisher: Publisher | None = None,
        on_commit: Callable[[], None] = lambda: None,
        tile_cache: TileCache | None = None,
    ) -> None:
        self.settings = settings
        self.database_url = database_url
        self.bootstrap = bootstrap
        self.topics = topics
        self.publisher = publisher
        self.on_commit = on_commit
        # The proofs' tiles: the leader puts each committed tile there, so
        # proofs at the newest sizes need no database read (tile_cache.py).
        self.tile_cache = tile_cache
        self.role = "starting"
        self.state: LogState | None = None
        self._last_checkpoint_size = -1
        self._last_checkpoint_at = 0.0
        self._verifiers = ThreadPoolExecutor(max(1, settings.verify_threads), thread_name_prefix="verify")
        self.metrics = SequencerMetrics(lambda: self.role == "leader")

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
        if latest:
            self.metrics.checkpointed(latest.tree_size, latest.signed_at.timestamp(), signed_here=False)
        consumer = PositionedConsumer(
            # gathers less than GATHERED_FETCH: checkpoints wait on it (16 KiB is ~8 ms at 5,000 events/s;
            # below ~400 events/s the 50 ms decide, a fifth of the checkpoint budget: 25 ms cost a
            # third more of the ledger's CPU per event at trickle rates, docs/benchmarks.md)
            self.bootstrap, self.topics.event_topics, fetch_max_wait_ms=50, fetch_min_bytes=16 * 1024,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            reader="ledger sequencer",
        )
        await consumer.start(self.state.offsets)
        self.metrics.loaded(self.state.size, self.state.offsets, consumer.log_ends)
        self.role = "leader"
        log.info("sequencing", extra={"tree_size": self.state.size})
        leading = asyncio.Event()
        publisher = self.publisher
        followers = (
            asyncio.create_task(keep_running("publisher", lambda: publisher.run(leading), leading))
            if publisher
            else None
        )
        checked: asyncio.Queue[Checked] = asyncio.Queue(maxsize=2)
        reader = asyncio.create_task(self._read(consumer, checked))
        try:
            await self._checkpoint_if_due(conn, force=True)
            while not stop.is_set():
                try:
                    first = await asyncio.wait_for(checked.get(), 0.05)
                except asyncio.TimeoutError:
                    if reader.done():
                        reader.result()  # the reader failed: let keep_running restart us
                else:
                    await self._sequence(conn, *await join_waiting(first, checked))
                await self._checkpoint_if_due(conn)
        finally:
            self.role = "stopping"
            leading.set()
            reader.cancel()
            if followers:
                followers.cancel()
            await asyncio.gather(reader, *([followers] if followers else []), return_exceptions=True)
            await consumer.stop()

    async def _read(self, consumer: PositionedConsumer, checked: asyncio.Queue[Checked]) -> None:
        """Fetch batches and start checking them on worker threads while the
        loop sequences earlier ones: signature checks stay off the critical
        path, and at most two batches wait (the queue bounds memory)."""
        while True:
            records = await consumer.fetch(timeout_ms=50, max_records=self.settings.batch_max_records)
            if records:
                await checked.put((records, self._classify(records)))

    def _classify(self, records: list[SourceRecord]) -> asyncio.Future[list[Verdict]]:
        loop = asyncio.get_running_loop()
        threads = max(1, self.settings.verify_threads)
        size = -(-len(records) // threads)
        chunks = [records[i : i + size] for i in range(0, len(records), size)]
        parts = [loop.run_in_executor(self._verifiers, classify, chunk, self.settings.events) for chunk in chunks]

        async def joined() -> list[Verdict]:
            return [v for part in await asyncio.gather(*parts) for v in part]

        return asyncio.ensure_future(joined())

    async def _sequence(self, conn: asyncpg.Connection, records: list[SourceRecord], verdicts: list[Verdict]) -> None:
        assert self.state is not None
        known = await store.known_event_ids(conn, event_ids(verdicts))
        plan = plan_batch(self.state, records, verdicts, known)
        if not (plan.entries or plan.rejections or plan.offsets):
            return
        at = datetime.now(timezone.utc)
        checkpoint = self._due_checkpoint()
        await store.commit_batch(conn, plan, at, checkpoint)
        if self.publisher:
            self.publisher.committed(plan.entries, at, rejections=bool(plan.rejections))
        if self.tile_cache is not None:
            self.tile_cache.put_all(plan.tiles)
        self.metrics.committed(len(records), plan, self.state.size)
        if plan.rejections:
            log.warning("rejected records", extra={"count": len(plan.rejections), "first": plan.rejections[0].reason})
        if plan.duplicates:
            log.info("skipped duplicate events", extra={"count": plan.duplicates})
        if checkpoint:
            self._checkpointed(checkpoint)
        self._committed()

    async def _checkpoint_if_due(self, conn: asyncpg.Connection, force: bool = False) -> None:
        """A checkpoint of its own, when one is due and no batch carried it
        (the log went quiet right after a batch, or the first one on leading)."""
        checkpoint = self._due_checkpoint(force)
        if checkpoint:
            await store.insert_checkpoint(conn, checkpoint)
            self._checkpointed(checkpoint)
            self._committed()

    def _due_checkpoint(self, force: bool = False) -> store.StoredCheckpoint | None:
        """The signed checkpoint of the current state, if the log grew and the
        interval has passed since the last one (or force, with none yet).
        A batch commits it in its own transaction: it is published the moment
        its entries are, with no second WAL flush for the checkpoint."""
        assert self.state is not None
        size = self.state.size
        if size <= self._last_checkpoint_size and not (force and self._last_checkpoint_size < 0):
            return None
        now = time.monotonic()
        if not force and now - self._last_checkpoint_at < self.settings.checkpoint_interval_s:
            return None
        # the interval runs from the signing; if the commit fails, the leader
        # restarts from the database and at most waits out one interval
        self._last_checkpoint_at = now
        root = self.state.tree.root()
        signed = self.settings.signer.sign(note.checkpoint_body(note.Checkpoint(self.settings.origin, size, root)))
        return store.StoredCheckpoint(size, root, self.state.chain_head, signed, datetime.now(timezone.utc))

    def _checkpointed(self, checkpoint: store.StoredCheckpoint) -> None:
        """A checkpoint is committed: tell the publisher and the metrics."""
        if self.publisher:
            self.publisher.checkpointed()
        self.metrics.checkpointed(checkpoint.tree_size, checkpoint.signed_at.timestamp())
        self._last_checkpoint_size = checkpoint.tree_size

    def _committed(self) -> None:
        if self.publisher:
            self.publisher.wake.set()
        self.on_commit()

