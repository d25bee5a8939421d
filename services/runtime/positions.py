"""Where a consumed record came from, shared by the consumer adapter and the
pure cores that decide on records (no Kafka client here)."""

from __future__ import annotations

from dataclasses import dataclass

Position = tuple[str, int]  # (topic, partition)


@dataclass(frozen=True)
class Delivery:
    """One Kafka record as read: where it came from and its exact value bytes."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
