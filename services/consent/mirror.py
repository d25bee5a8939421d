"""Keeps the consent database's copy of every consent (store.mirror) in step
with consent.events. Runs on the housekeeping replica only; it resumes from
the positions its tracking rows record, so a restart or a new leader neither
skips nor repeats an event. Should two replicas ever run it at once (a lock
lost mid-batch), the tracking rows still let each event in only once."""

from __future__ import annotations

import logging
from typing import Callable

import asyncpg

from medledger.consent import store
from medledger.runtime.consumer import PositionedConsumer
from medledger.runtime.envelope import EnvelopeVerifier

log = logging.getLogger(__name__)


class ConsentMirror:
    def __init__(
        self, bootstrap: str, topic: str, pool: Callable[[], asyncpg.Pool], verifier: EnvelopeVerifier
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.pool = pool
        self.verifier = verifier

    async def run(self) -> None:
        """Fold verified records in until cancelled or a failure (the caller restarts it)."""
        async with self.pool().acquire() as conn:
            positions = await store.mirrored_positions(conn, self.topic)
        async with PositionedConsumer(self.bootstrap, [self.topic], reader="consent mirror") as consumer:
            await consumer.start({(self.topic, p): o for p, o in positions.items()})
            while True:
                deliveries = await consumer.fetch(timeout_ms=500, max_records=2000)
                records: list[store.Record] = [
                    (o.delivery.partition, o.delivery.offset, o.envelope)
                    for o in await consumer.opened(deliveries, self.verifier)
                ]
                if records:
                    async with self.pool().acquire() as conn:
                        await store.mirror(conn, self.topic, records)
