"""The runtime's outbox relay against the real PostgreSQL and broker: every
committed event reaches the topic once and in commit order, and a lingering
relay (records' disclosures, docs/architecture.md, Outbox) carries a burst of
separate commits in one round instead of one round each."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import AsyncIterator, TypedDict, Unpack

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from medledger.runtime.consumer import PositionedConsumer
from medledger.runtime.envelope import EnvelopeVerifier
from medledger.runtime.kafka import make_producer
from medledger.runtime.outbox import Outbox, OutboxRelay
from medledger.runtime.settings import Topics
from medledger.testing.ledger import sample_envelope
from medledger.testing.stack import BOOTSTRAP, PRODUCERS, until

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


class RelayOptions(TypedDict, total=False):
    """What a test may set on a relay beyond its lock (OutboxRelay's keywords)."""

    linger_s: float


@dataclass
class Setting:
    """An outbox table in a fresh database, its topic and a producer."""

    topic: str
    verifier: EnvelopeVerifier
    outbox: Outbox
    producer: AIOKafkaProducer
    conn: asyncpg.Connection
    database_url: str

    def relay(self, lock_id: int, **options: Unpack[RelayOptions]) -> OutboxRelay:
        return OutboxRelay(self.outbox, self.database_url, self.producer, BOOTSTRAP, self.verifier, lock_id,
                           standby_poll_s=0.05, **options)


@pytest.fixture
async def setting(topics: Topics, database_url: str) -> AsyncIterator[Setting]:
    topic = topics.event_topics[TOPIC_INDEX]
    producer = make_producer(BOOTSTRAP)
    await producer.start()
    conn = await asyncpg.connect(database_url)
    await conn.execute(OUTBOX_TABLE)
    try:
        yield Setting(topic, PRODUCERS.verifier(topics.prefix), Outbox(topic, PRODUCERS.signers["consent"], channel="outbox_test"),
                      producer, conn, database_url)
    finally:
        await conn.close()
        await producer.stop()


async def test_a_lingering_relay_publishes_a_burst_of_commits_once_in_order_and_in_one_round(setting: Setting) -> None:
    topic, verifier, outbox, conn = setting.topic, setting.verifier, setting.outbox, setting.conn
    stop = asyncio.Event()
    relay = setting.relay(0x7465_7374, linger_s=0.5)
    running = asyncio.create_task(relay.run(stop))
    try:
        await until(lambda: relay.role == "leader", "the relay never took the lead")
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


class _NeverPublished:
    """A pool whose outbox always answers "not published yet": a standby
    waiting through it can only learn of publication from the leader's
    notifications."""

    def acquire(self) -> "_NeverPublished":
        return self

    async def __aenter__(self) -> "_NeverPublished":
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    async def fetchval(self, *_: object) -> int:
        return 1  # one row still unpublished


async def test_a_standby_replica_hears_what_the_leader_published(setting: Setting) -> None:
    """Two replicas of a service share a database; the one whose relay
    stands by still answers its commands' waits as soon as the leader has
    published (records' writes wait for their event), from the leader's
    notification, not by polling the database."""
    outbox, conn = setting.outbox, setting.conn
    stop = asyncio.Event()
    leader, standby = setting.relay(0x7061_6972), setting.relay(0x7061_6972)
    running = [asyncio.create_task(leader.run(stop))]
    try:
        await until(lambda: leader.role == "leader", "the relay never took the lead")
        running.append(asyncio.create_task(standby.run(stop)))
        await until(lambda: standby.role == "standby" and standby._hearing, "the second relay never stood by")

        # more ids than one notification may carry (8,000 bytes), in one batch
        envs = [sample_envelope(TOPIC_INDEX, i, aggregate_id=f"patient-{i % 3}") for i in range(300)]
        async with conn.transaction():
            for env in envs:
                await outbox.enqueue(conn, env)
        ids = [env.event_id for env in envs]
        assert await standby.wait_published(ids, _NeverPublished(), timeout=20)
        assert await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL") == len(ids)
        # and an event nobody committed is never reported published
        never = sample_envelope(TOPIC_INDEX, 999, aggregate_id="patient-0").event_id
        assert not await standby.wait_published([never], _NeverPublished(), timeout=0.3)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*running), 30)
