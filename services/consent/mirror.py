"""Keeps the consent database's copy of every consent (store.mirror) in step
with consent.events. Runs on the housekeeping replica only; it resumes from
the positions its tracking rows record, so a restart or a new leader neither
skips nor repeats an event. Should two replicas ever run it at once (a lock
lost mid-batch), the tracking rows still let each event in only once."""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

import asyncpg
from aiokafka import TopicPartition
from google.protobuf.message import DecodeError

from medledger.consent import store
from medledger.runtime.kafka import make_consumer
from medledger.v1 import events_pb2

log = logging.getLogger(__name__)


class ConsentMirror:
    def __init__(
        self, bootstrap: str, topic: str, pool: Callable[[], asyncpg.Pool],
        partitions_for: Callable[[str], Awaitable[set[int]]],
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.pool = pool
        self.partitions_for = partitions_for

    async def run(self) -> None:
        """Fold records in until cancelled or a failure (the caller restarts it)."""
        consumer = make_consumer(self.bootstrap, group_id=None)
        await consumer.start()
        try:
            partitions = [TopicPartition(self.topic, p) for p in sorted(await self.partitions_for(self.topic))]
            consumer.assign(partitions)
            async with self.pool().acquire() as conn:
                positions = await store.mirrored_positions(conn, self.topic)
            for tp in partitions:
                consumer.seek(tp, positions.get(tp.partition, 0))
            while True:
                batch = await consumer.getmany(timeout_ms=500, max_records=2000)
                records: list[store.Record] = []
                for tp, found in batch.items():
                    for record in found:
                        try:
                            records.append((tp.partition, record.offset, events_pb2.EventEnvelope.FromString(record.value)))
                        except DecodeError:
                            log.warning("not an envelope; not mirrored", extra={"partition": tp.partition, "offset": record.offset})
                if records:
                    async with self.pool().acquire() as conn:
                        await store.mirror(conn, self.topic, records)
        finally:
            await consumer.stop()
