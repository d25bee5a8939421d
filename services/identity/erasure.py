"""Shredding a patient's demographics when the patient erases their data
(GDPR Art. 17): the records service publishes PatientDataErased on
records.events once it destroyed the patient's record key; this reader
deletes the patient's sealed demographics and medical-record-number hashes
in the same transaction as the event's tracking row (applied_events) and its
position (consumer_positions), so each erasure is applied exactly once and a
restart resumes where it stopped.

The identity itself (kind, keys, memberships) stays: it is on identity.events
and holds no PHI, and consents and the ledger refer to it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

import asyncpg

from medledger.identity import store
from medledger.runtime.consumer import GATHERED_FETCH, PositionedConsumer
from medledger.runtime.envelope import EnvelopeVerifier
from medledger.runtime.outbox import Conn
from medledger.v1 import records_pb2

log = logging.getLogger(__name__)

ERASED = "medledger.v1.PatientDataErased"


async def shred(conn: Conn, patient_id: str) -> None:
    await conn.execute("DELETE FROM demographics WHERE identity_id = $1", patient_id)
    await conn.execute("DELETE FROM mrn_index WHERE identity_id = $1", patient_id)


class ErasureListener:
    def __init__(self, bootstrap: str, topic: str, verifier: EnvelopeVerifier, pool: Callable[[], asyncpg.Pool]) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.verifier = verifier
        self.pool = pool

    async def run(self, stop: asyncio.Event) -> None:
        """Read until stop is set or an error (the caller restarts it)."""
        async with self.pool().acquire() as conn:
            rows = await conn.fetch("SELECT partition, next_offset FROM consumer_positions WHERE topic = $1", self.topic)
        # records.events carries every record version and erasures are rare
        consumer = PositionedConsumer(self.bootstrap, [self.topic], reader="identity erasures", **GATHERED_FETCH)
        await consumer.start({(self.topic, r["partition"]): r["next_offset"] for r in rows})
        try:
            while not stop.is_set():
                deliveries = await consumer.fetch(timeout_ms=500, max_records=2000)
                if not deliveries:
                    continue
                positions = await consumer.positions()
                erasures = await consumer.opened(deliveries, self.verifier, types={ERASED})
                async with self.pool().acquire() as conn, conn.transaction():
                    for opened in erasures:
                        env, where = opened.envelope, opened.delivery
                        if not await store.mark_applied(conn, env.event_id, where.topic, where.partition, where.offset):
                            continue
                        erased = records_pb2.PatientDataErased()
                        env.payload.Unpack(erased)
                        await shred(conn, erased.request.patient_id)
                        log.info("patient demographics shredded", extra={
                            "patient_id": erased.request.patient_id, "event_id": env.event_id,
                        })
                    await conn.executemany(
                        "INSERT INTO consumer_positions (topic, partition, next_offset) VALUES ($1, $2, $3)"
                        " ON CONFLICT (topic, partition) DO UPDATE SET next_offset = $3",
                        [(topic, partition, offset) for (topic, partition), offset in positions.items()],
                    )
        finally:
            await consumer.stop()
