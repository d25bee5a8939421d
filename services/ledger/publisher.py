"""Followers: publish what the sequencer committed to ledger.entries,
ledger.checkpoints and ledger.rejected, strictly after it committed.

The active sequencer's process is the only writer of these single-partition
topics. On start it reads the last record of each topic and resumes right
after it (entries by index, checkpoints by tree size, rejections by id), so a
crash between sending and remembering neither skips nor repeats a record.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from datetime import datetime
from typing import Sequence

import asyncpg
from aiokafka import AIOKafkaProducer
from google.protobuf.timestamp_pb2 import Timestamp

from medledger.ledger import store
from medledger.ledger.intake import NewEntry
from medledger.runtime.kafka import fill_batch, last_record
from medledger.runtime.settings import Topics
from medledger.v1 import events_pb2, ledger_pb2

log = logging.getLogger(__name__)
BATCH = 2000
CHECKPOINT_PAGE = 100  # checkpoints read per round
REJECTION_PAGE = 500  # rejections read per round
FRESH_LIMIT = 20 * BATCH  # committed entries held in memory for publishing; past it, read back
# The ledger's producer: a 2,000-entry round (~1.2 MB) in two requests, not
# 75 of aiokafka's default 16 KiB (one batch per partition per request).
# Under ledger.entries' max.message.bytes (2 * MAX_RECORD_BYTES).
PRODUCER_OPTIONS = {"max_batch_size": 1024 * 1024}


def _ts(value: object) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)  # type: ignore[arg-type]
    return ts


def entry_message(e: store.StoredEntry) -> events_pb2.LedgerEntry:
    """An entry as read back from the database."""
    return _ledger_entry(e, _ts(e.sequenced_at), e.source_topic, e.source_partition, e.source_offset)


def _ledger_entry(
    e: store.StoredEntry | NewEntry, sequenced_at: Timestamp, topic: str, partition: int, offset: int
) -> events_pb2.LedgerEntry:
    return events_pb2.LedgerEntry(
        index=e.index, event=e.event, leaf_hash=e.leaf_hash, chain_hash=e.chain_hash, sequenced_at=sequenced_at,
        event_id=e.event_id, source_topic=topic, source_partition=partition, source_offset=offset,
    )


def checkpoint_message(cp: store.StoredCheckpoint) -> ledger_pb2.Checkpoint:
    return ledger_pb2.Checkpoint(
        checkpoint=cp.note, tree_size=cp.tree_size, root_hash=cp.root_hash,
        chain_hash=cp.chain_hash, signed_at=_ts(cp.signed_at),
    )


def rejection_message(r: store.StoredRejection) -> events_pb2.RejectedRecord:
    return events_pb2.RejectedRecord(
        reason=r.reason, source_topic=r.source_topic, source_partition=r.source_partition,
        source_offset=r.source_offset, value_sha256=r.value_sha256, value_size=r.value_size,
        rejected_at=_ts(r.rejected_at),
    )


async def _send_all(producer: AIOKafkaProducer, topic: str, items: Sequence[tuple[bytes, bytes]]) -> None:
    """Whole batches (runtime/kafka.fill_batch), not one send() each: the CPU
    per record is shared with the sequencer on the same event loop."""
    pending: list[tuple[bytes | None, bytes]] = list(reversed(items))
    futures = []
    while pending:
        futures.append(await producer.send_batch(fill_batch(producer, pending), topic, partition=0))
    await asyncio.gather(*futures)


class Publisher:
    def __init__(self, pool: asyncpg.Pool, producer: AIOKafkaProducer, bootstrap: str, topics: Topics) -> None:
        self.pool = pool
        self.producer = producer
        self.bootstrap = bootstrap
        self.topics = topics
        self.wake = asyncio.Event()
        self.next_index = 0
        self.last_checkpoint_size = -1
        self.last_rejection_id = 0
        # entries the sequencer committed, with their time, not yet published
        self._fresh: deque[tuple[NewEntry, datetime]] = deque()
        self._known_end: int | None = None  # one past the last entry reported; None: ask the database
        self._checkpoints_due = True  # look in the database on the first round
        self._rejections_due = True

    async def _resume_points(self) -> None:
        entry = await last_record(self.bootstrap, self.topics.ledger_entries)
        self.next_index = events_pb2.LedgerEntry.FromString(entry.value).index + 1 if entry else 0
        cp = await last_record(self.bootstrap, self.topics.ledger_checkpoints)
        self.last_checkpoint_size = ledger_pb2.Checkpoint.FromString(cp.value).tree_size if cp else -1
        rej = await last_record(self.bootstrap, self.topics.ledger_rejected)
        self.last_rejection_id = int(rej.key) if rej and rej.key else 0

    def committed(self, entries: Sequence[NewEntry], at: datetime, *, rejections: bool = False) -> None:
        """The sequencer committed these entries (in index order) at ``at``:
        publish them from memory instead of reading them back. Past
        FRESH_LIMIT waiting (the broker slow or away) memory is let go and
        the database serves them, as after a restart."""
        if len(self._fresh) + len(entries) > FRESH_LIMIT:
            self._fresh.clear()
        else:
            self._fresh.extend((e, at) for e in entries)
        if entries:
            self._known_end = entries[-1].index + 1
        self._rejections_due |= rejections

    def checkpointed(self) -> None:
        """The sequencer stored a checkpoint: the next round looks for it."""
        self._checkpoints_due = True

    def _from_memory(self) -> list[tuple[bytes, bytes]] | None:
        """Up to BATCH entries from next_index as (key, value); [] when every
        entry the sequencer reported is published; None when only the
        database can say (a gap in memory, or nothing reported yet)."""
        fresh = self._fresh
        while fresh and fresh[0][0].index < self.next_index:
            fresh.popleft()
        if not fresh and self._known_end is not None and self.next_index >= self._known_end:
            return []
        if not fresh or fresh[0][0].index != self.next_index:
            return None
        stamps: dict[datetime, Timestamp] = {}  # one per batch: every entry of a batch has its time
        out = []
        for _ in range(min(BATCH, len(fresh))):
            e, at = fresh.popleft()
            if at not in stamps:
                stamps[at] = _ts(at)
            message = _ledger_entry(e, stamps[at], e.source.topic, e.source.partition, e.source.offset)
            out.append((str(e.index).encode(), message.SerializeToString()))
        return out

    async def _drain(self) -> bool:
        """Publish one round of what is pending; True if anything was sent."""
        entries = self._from_memory()
        look_for_checkpoints, self._checkpoints_due = self._checkpoints_due, False
        look_for_rejections, self._rejections_due = self._rejections_due, False
        cps: list[store.StoredCheckpoint] = []
        rejections: list[store.StoredRejection] = []
        if entries is None or look_for_checkpoints or look_for_rejections:
            async with self.pool.acquire() as conn:
                if entries is None:
                    entries = [(str(e.index).encode(), entry_message(e).SerializeToString())
                               for e in await store.entries_from(conn, self.next_index, BATCH)]
                if look_for_checkpoints:
                    cps = await store.checkpoints_after(conn, self.last_checkpoint_size, CHECKPOINT_PAGE)
                if look_for_rejections:
                    rejections = await store.rejections_after(conn, self.last_rejection_id, REJECTION_PAGE)
        if entries:
            await _send_all(self.producer, self.topics.ledger_entries, entries)
            self.next_index += len(entries)
        if rejections:
            await _send_all(
                self.producer, self.topics.ledger_rejected,
                [(str(r.id).encode(), rejection_message(r).SerializeToString()) for r in rejections],
            )
            self.last_rejection_id = rejections[-1].id
            self._rejections_due |= len(rejections) == REJECTION_PAGE  # a full page: more may follow
        # Checkpoints go last, and only those whose entries are all on
        # ledger.entries: a follower that sees a checkpoint already has its
        # entries, however far behind the publisher is.
        covered = [c for c in cps if c.tree_size <= self.next_index]
        if covered:
            await _send_all(
                self.producer, self.topics.ledger_checkpoints,
                [(str(c.tree_size).encode(), checkpoint_message(c).SerializeToString()) for c in covered],
            )
            self.last_checkpoint_size = covered[-1].tree_size
        # a full page (more may follow), or some wait for their entries
        self._checkpoints_due |= len(cps) == CHECKPOINT_PAGE or len(covered) < len(cps)
        return bool(entries or covered or rejections)

    async def run(self, stop: asyncio.Event) -> None:
        await self._resume_points()
        log.info("publishing", extra={"next_index": self.next_index})
        while not stop.is_set():
            self.wake.clear()
            if await self._drain():
                continue
            try:
                await asyncio.wait_for(self.wake.wait(), 1.0)
            except asyncio.TimeoutError:
                # once a quiet second, look in the database for anything
                # not reported in memory
                self._checkpoints_due = self._rejections_due = True
                self._known_end = None

