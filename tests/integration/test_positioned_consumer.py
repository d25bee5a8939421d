"""The runtime's PositionedConsumer against the real broker: it resumes at the
positions its owner stored, picks up partitions added while it runs (its log
ends too), and hands on only envelopes that verify."""

from __future__ import annotations

import asyncio
import time

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

from medledger.runtime.consumer import PositionedConsumer
from medledger.runtime.kafka import TopicSpec, delete_topics, ensure_topics, make_producer
from medledger.runtime.positions import Delivery
from medledger.testing.ledger import sample_envelope
from medledger.testing.stack import BOOTSTRAP, PRODUCERS, unique


async def _send(topic: str, partition: int, values: list[bytes]) -> None:
    producer = make_producer(BOOTSTRAP)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, partition=partition)
    finally:
        await producer.stop()


async def _read(consumer: PositionedConsumer, count: int, timeout: float = 30) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += await consumer.fetch(timeout_ms=200)
    return got


async def test_resumes_at_stored_positions_and_reads_partitions_added_later(stack: None) -> None:
    topic = unique("pc")
    await ensure_topics(BOOTSTRAP, [TopicSpec(topic, 1, {})])
    try:
        await _send(topic, 0, [b"a", b"b", b"c"])
        consumer = PositionedConsumer(BOOTSTRAP, [topic], refresh_partitions_s=0.2)
        async with consumer:
            await consumer.start({(topic, 0): 1})  # the owner stored: next is offset 1
            first = await _read(consumer, 2)
            assert [(d.partition, d.offset, d.value) for d in first] == [(0, 1, b"b"), (0, 2, b"c")]
            assert await consumer.end_offsets() == {TopicPartition(topic, 0): 3}  # starts the ends client
            admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
            await admin.start()
            try:
                await admin.create_partitions({topic: NewPartitions(total_count=2)})
            finally:
                await admin.close()
            await asyncio.sleep(0.5)
            await _send(topic, 1, [b"new"])
            await _send(topic, 0, [b"d"])
            later = await _read(consumer, 2)
            assert sorted((d.partition, d.offset, d.value) for d in later) == [(0, 3, b"d"), (1, 0, b"new")]
            assert await consumer.positions() == {(topic, 0): 4, (topic, 1): 1}
            # the ends client, started before the partition was added, knows it too
            assert await consumer.end_offsets() == {TopicPartition(topic, 0): 4, TopicPartition(topic, 1): 1}
    finally:
        await delete_topics(BOOTSTRAP, [topic])


async def test_envelopes_passes_only_authentic_events(stack: None) -> None:
    topic = unique("pc")
    await ensure_topics(BOOTSTRAP, [TopicSpec(topic, 1, {})])
    try:
        genuine = sample_envelope(1, 7, "patient-7")  # a consent.events type
        forged = PRODUCERS.forgeries(genuine, not_allowed="records")
        sealed = PRODUCERS.seal(genuine)
        await _send(topic, 0, [*forged.values(), b"not an envelope", sealed])
        verifier = PRODUCERS.verifier()
        verifier.topic_kinds[topic] = "consent.events"
        async with PositionedConsumer(BOOTSTRAP, [topic]) as consumer:
            await consumer.start()
            deliveries = await _read(consumer, len(forged) + 2)
            opened = consumer.envelopes(deliveries, verifier)
        assert [o.envelope.SerializeToString() for o in opened] == [sealed]
        assert opened[0].delivery.offset == len(forged) + 1
    finally:
        await delete_topics(BOOTSTRAP, [topic])
