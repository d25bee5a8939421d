"""Building and reading EventEnvelopes (DESIGN.md, Events).

The envelope's Kafka key is its aggregate id so one patient's events stay in
order on one partition. event_id is a UUIDv7: unique, and sortable by time.
"""

from __future__ import annotations

from datetime import datetime, timezone

import uuid6
from aiokafka import AIOKafkaProducer
from google.protobuf.message import Message

from medledger.v1 import events_pb2


def new_event_id() -> str:
    return str(uuid6.uuid7())


def envelope(
    payload: Message,
    *,
    aggregate_id: str,
    producer: str,
    actor: str = "",
    event_id: str | None = None,
    occurred_at: datetime | None = None,
) -> events_pb2.EventEnvelope:
    """Wrap a payload message. Callers must put no PHI in the payload."""
    env = events_pb2.EventEnvelope(
        event_id=event_id or new_event_id(),
        event_type=payload.DESCRIPTOR.full_name,
        aggregate_id=aggregate_id,
        producer=producer,
        actor=actor,
    )
    env.occurred_at.FromDatetime(occurred_at or datetime.now(timezone.utc))
    env.payload.Pack(payload)
    return env


async def publish(producer: AIOKafkaProducer, topic: str, event: events_pb2.EventEnvelope) -> None:
    """Send one envelope and wait for the broker's acknowledgement (acks=all)."""
    await producer.send_and_wait(topic, event.SerializeToString(), key=event.aggregate_id.encode())
