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
from typing import Sequence

import asyncpg
from aiokafka import AIOKafkaProducer
from google.protobuf.timestamp_pb2 import Timestamp

from medledger.ledger import store
from medledger.runtime.kafka import fill_batch, last_record
from medledger.runtime.settings import Topics
from medledger.v1 import events_pb2, ledger_pb2

log = logging.getLogger(__name__)
BATCH = 2000
# The ledger's producer: a 2,000-entry round (~1.2 MB) in two requests, not
# 75 of aiokafka's default 16 KiB (one batch per partition per request).
# Under ledger.entries' max.message.bytes (2 * MAX_RECORD_BYTES).
PRODUCER_OPTIONS = {"max_batch_size": 1024 * 1024}


def _ts(value: object) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)  # type: ignore[arg-type]
    return ts


def entry_message(e: store.StoredEntry) -> events_pb2.LedgerEntry:
    return events_pb2.LedgerEntry(
        index=e.index, event=e.event, leaf_hash=e.leaf_hash, chain_hash=e.chain_hash,
        sequenced_at=_ts(e.sequenced_at), event_id=e.event_id, source_topic=e.source_topic,
        source_partition=e.source_partition, source_offset=e.source_offset,
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

    async def _resume_points(self) -> None:
        entry = await last_record(self.bootstrap, self.topics.ledger_entries)
        self.next_index = events_pb2.LedgerEntry.FromString(entry.value).index + 1 if entry else 0
        cp = await last_record(self.bootstrap, self.topics.ledger_checkpoints)
        self.last_checkpoint_size = ledger_pb2.Checkpoint.FromString(cp.value).tree_size if cp else -1
        rej = await last_record(self.bootstrap, self.topics.ledger_rejected)
        self.last_rejection_id = int(rej.key) if rej and rej.key else 0

    async def _drain(self) -> bool:
        """Publish one round of everything pending; True if anything was sent."""
        async with self.pool.acquire() as conn:
            entries = await store.entries_from(conn, self.next_index, BATCH)
            cps = await store.checkpoints_after(conn, self.last_checkpoint_size)
            rejections = await store.rejections_after(conn, self.last_rejection_id)
        if entries:
            await _send_all(
                self.producer, self.topics.ledger_entries,
                [(str(e.index).encode(), entry_message(e).SerializeToString()) for e in entries],
            )
            self.next_index = entries[-1].index + 1
        if rejections:
            await _send_all(
                self.producer, self.topics.ledger_rejected,
                [(str(r.id).encode(), rejection_message(r).SerializeToString()) for r in rejections],
            )
            self.last_rejection_id = rejections[-1].id
        # Checkpoints go last: a follower that sees a checkpoint already has its entries.
        if cps:
            await _send_all(
                self.producer, self.topics.ledger_checkpoints,
                [(str(c.tree_size).encode(), checkpoint_message(c).SerializeToString()) for c in cps],
            )
            self.last_checkpoint_size = cps[-1].tree_size
        return bool(entries or cps or rejections)

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
                pass

