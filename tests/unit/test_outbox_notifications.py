"""The leading relay names what it published in PostgreSQL notifications,
whose payload must stay under 8,000 bytes (runtime/outbox.py)."""

from __future__ import annotations

import uuid

from medledger.runtime.outbox import NOTIFY_PAYLOAD_BYTES, notification_payloads


def test_a_whole_batch_of_ids_is_split_under_the_payload_limit_and_kept_in_order() -> None:
    placed = [(str(uuid.uuid4()), i % 3, i) for i in range(500)]
    payloads = notification_payloads(placed)
    assert len(payloads) > 1
    assert all(len(p.encode()) <= NOTIFY_PAYLOAD_BYTES < 8000 for p in payloads)
    assert [i for p in payloads for i in p.split(",")] == [event_id for event_id, _, _ in placed]


def test_a_small_batch_is_one_notification() -> None:
    assert notification_payloads([("a", 0, 1), ("b", 0, 2)]) == ["a,b"]
    assert notification_payloads([]) == []
