"""The runtime's outbox relay against the real PostgreSQL and broker: every
committed event reaches the topic once and in commit order, and a lingering
relay (records' disclosures, docs/architecture.md, Outbox) carries a burst of
separate commits in one round instead of one round each."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from medledger.runtime.consumer import PositionedConsumer
from medledger.runtime.envelope import EnvelopeVerifier
from medledger.runtime.kafka import make_producer
from medledger.runtime.outbox import Outbox, OutboxRelay
from medledger.runtime.settings import Topics
from medledger.testing.ledger import sample_envelope
from medledger.testing.stack import BOOTSTRAP, PRODUCERS

OUTBOX_TABLE = """
CREATE TABLE outbox (
    seq bigserial PRIMARY KEY, event_id text UNIQUE NOT NULL, aggregate_id text NOT NULL,
    envelope bytea NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), published_at timestamptz,
    partition integer, "offset" bigint
)"""
TOPIC_INDEX = 1  # consent.events: the sample envelope is a consent event
BURST = 20


async def _topic_event_ids(topic: str, verifier: EnvelopeVerifier, count: int, timeout: float = 30) -> list[str]:
    consumer = PositionedConsumer(BOOTSTRAP, [topic])
    async with consumer:
        await consumer.start()
        found: list[str] = []
        deadline = time.monotonic() + timeout
        while len(found) < count and time.monotonic() < deadline:
            found += [o.envelope.event_id for o in consumer.envelopes(await consumer.fetch(), verifier)]
        return found


async def test_a_lingering_relay_publishes_a_burst_of_commits_once_in_order_and_in_one_round(
    topics: Topics, database_url: str
) -> None:
    topic = topics.event_topics[TOPIC_INDEX]
    verifier = PRODUCERS.verifier(topics.prefix)
    outbox = Outbox(topic, PRODUCERS.signers["consent"], channel="outbox_test")
    producer = make_producer(BOOTSTRAP)
    await producer.start()
    conn = await asyncpg.connect(database_url)
    await conn.execute(OUTBOX_TABLE)
    stop = asyncio.Event()
    relay = OutboxRelay(outbox, database_url, producer, BOOTSTRAP, verifier, 0x7465_7374, linger_s=0.5,
                        standby_poll_s=0.05)
    running = asyncio.create_task(relay.run(stop))
    try:
        deadline = time.monotonic() + 30
        while relay.role != "leader":
            assert time.monotonic() < deadline, "the relay never took the lead"
            await asyncio.sleep(0.05)
        committed = []
        for i in range(BURST):  # one transaction each, as records commits one disclosure per read
            env = sample_envelope(TOPIC_INDEX, i, aggregate_id=f"patient-{i % 3}")
            async with conn.transaction():
                await outbox.enqueue(conn, env)
            committed.append(env.event_id)

        published = await _topic_event_ids(topic, verifier, BURST)
        assert sorted(published) == sorted(committed) and len(published) == BURST  # each once
        # one partition per aggregate: each patient's events keep their commit order
        for patient in range(3):
            mine = [e for j, e in enumerate(committed) if j % 3 == patient]
            assert [e for e in published if e in mine] == mine
        # the relay marks its rows just after the broker acknowledged them (and
        # after the topic shows them), so give the marking a moment
        marked_by = time.monotonic() + 10
        while await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") and time.monotonic() < marked_by:
            await asyncio.sleep(0.05)
        rounds = await conn.fetchval("SELECT count(DISTINCT published_at) FROM outbox")
        assert await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0
        assert rounds == 1, f"the burst took {rounds} rounds"
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
        await conn.close()
        await producer.stop()
