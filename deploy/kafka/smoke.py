"""Smoke check for the local broker started by deploy/kafka/kafka.sh.

Creates a throwaway topic with AIOKafkaAdminClient, produces one message, consumes it back in a
consumer group (committing the offset), then deletes the topic. Exit 0 on success.

    .venv/bin/python deploy/kafka/smoke.py [bootstrap]   # default 127.0.0.1:$MEDLEDGER_KAFKA_PORT
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic


async def smoke(bootstrap: str) -> None:
    topic = f"medledger.smoke.{uuid.uuid4().hex[:8]}"
    payload = f"hello {topic}".encode()
    started = time.monotonic()

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, num_partitions=3, replication_factor=1,
                      topic_configs={"retention.ms": "-1"})]
        )
        print(f"created topic {topic}")

        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        try:
            meta = await producer.send_and_wait(topic, payload, key=b"k1")
            print(f"produced to partition {meta.partition} offset {meta.offset}")
        finally:
            await producer.stop()

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=f"{topic}.group",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            msg = await asyncio.wait_for(consumer.getone(), timeout=30)
            assert msg.value == payload, msg
            await consumer.commit()
            print(f"consumed {msg.value!r} from partition {msg.partition} offset {msg.offset}; committed")
        finally:
            await consumer.stop()

        await admin.delete_topics([topic])
        print(f"deleted topic {topic}")
    finally:
        await admin.close()
    print(f"ok in {time.monotonic() - started:.1f}s")


def main() -> None:
    default = f"127.0.0.1:{os.environ.get('MEDLEDGER_KAFKA_PORT', '9092')}"
    bootstrap = sys.argv[1] if len(sys.argv) > 1 else default
    asyncio.run(smoke(bootstrap))


if __name__ == "__main__":
    main()
