"""Helpers for access-monitor tests and its benchmark: the events its rules count,
signed by the session's producer keys, and the alerts it publishes."""

from __future__ import annotations

import itertools
import time
import uuid
from datetime import datetime, timezone
from typing import Callable, Sequence

from google.protobuf.message import Message

from medledger.monitor.observations import partition_of
from medledger.runtime.envelope import envelope
from medledger.runtime.consumer import PositionedConsumer
from medledger.runtime.settings import Topics
from medledger.testing.stack import BOOTSTRAP, PRODUCERS
from medledger.v1 import consent_pb2, events_pb2, monitor_pb2, records_pb2

Event = tuple[str, events_pb2.EventEnvelope]  # (topic, signed envelope)


def new_id() -> str:
    return str(uuid.uuid4())


def _signed(payload: Message, producer: str, patient_id: str, actor: str, at: datetime | None) -> events_pb2.EventEnvelope:
    env = envelope(payload, aggregate_id=patient_id, producer=producer, actor=actor, occurred_at=at)
    return PRODUCERS.signers[producer].sign(env)


def decision(
    topics: Topics, requester: str, patient: str, allow: bool = False, at: datetime | None = None
) -> Event:
    """An AccessDecided on access.events, as consent publishes it."""
    payload = consent_pb2.AccessDecided(
        requester_id=requester, patient_id=patient, purpose=consent_pb2.PURPOSE_TREATMENT, category="Observation",
        decision=consent_pb2.DECISION_ALLOW if allow else consent_pb2.DECISION_DENY,
        reason=consent_pb2.REASON_CONSENT if allow else consent_pb2.REASON_NO_CONSENT, asked_by=requester,
    )
    return topics.access_events, _signed(payload, "consent", patient, requester, at)


def disclosure(
    topics: Topics, requester: str, patient: str, organization: str = "", at: datetime | None = None
) -> Event:
    """A RecordsDisclosed on access.events, as records publishes it after a read."""
    payload = records_pb2.RecordsDisclosed(
        disclosure_id=new_id(), requester_id=requester, organization_id=organization, patient_id=patient,
        purpose=consent_pb2.PURPOSE_TREATMENT, basis=records_pb2.DISCLOSURE_BASIS_CONSENT, operation="GetRecord",
    )
    return topics.access_events, _signed(payload, "records", patient, requester, at)


def break_glass(
    topics: Topics, practitioner: str, patient: str, organization: str, at: datetime | None = None
) -> Event:
    """A BreakGlassInvoked on consent.events."""
    payload = consent_pb2.BreakGlassInvoked(
        break_glass_id=new_id(), patient_id=patient, practitioner_id=practitioner, organization_id=organization,
        justification_sha256=b"\x01" * 32, review_required=True,
    )
    payload.valid_until.FromDatetime(datetime.now(timezone.utc))
    return topics.consent_events, _signed(payload, "consent", patient, practitioner, at)


def subject_on(partition: int, partitions: int = 3, prefix: str = "marker") -> str:
    """A fresh subject id whose events the monitor counts on ``partition``."""
    for n in itertools.count():
        candidate = f"{prefix}-{uuid.uuid4()}-{n}"
        if partition_of(candidate, partitions) == partition:
            return candidate
    raise AssertionError("unreachable")


def probing_burst(topics: Topics, requester: str, denials: int) -> list[Event]:
    """``denials`` refusals for one requester, one patient each."""
    return [decision(topics, requester, f"patient-{new_id()}") for _ in range(denials)]


def marker(topics: Topics, subject: str, threshold: int = 20) -> list[Event]:
    """Exactly threshold + 1 denials for ``subject``, spread over every source
    partition (patients are keys): its probing alert can only fire once the
    monitor has read past everything published before on every partition, and
    counted it on ``subject``'s partition."""
    return probing_burst(topics, subject, threshold + 1)


Alerts = list[tuple[bytes, events_pb2.EventEnvelope]]  # (record value, verified envelope)


async def read_alerts(
    topics: Topics, expected: int = 0, timeout: float = 60, until: Callable[[Alerts], bool] | None = None
) -> Alerts:
    """Records on access.alerts from offset 0, each verified as the monitor's,
    until ``expected`` distinct alerts are there and ``until(found)`` holds (or
    timeout), then to the topic's end."""
    verifier = PRODUCERS.verifier(topics.prefix)
    found: Alerts = []

    def done() -> bool:
        return len({e.event_id for _, e in found}) >= expected and (until is None or until(found))

    async with PositionedConsumer(BOOTSTRAP, [topics.access_alerts], isolation_level="read_uncommitted") as consumer:
        await consumer.start()

        async def read() -> None:
            for d in await consumer.fetch(timeout_ms=500):
                found.append((d.value or b"", verifier.open(topics.access_alerts, d.value or b"")))

        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            await read()
        ends = await consumer.end_offsets()
        while await consumer.behind(ends):
            await read()
    return found


def alert_of(env: events_pb2.EventEnvelope) -> monitor_pb2.AccessAlert:
    alert = monitor_pb2.AccessAlert()
    assert env.payload.Unpack(alert), env.event_type
    return alert


def alerts_for(found: Alerts, subject: str) -> list[monitor_pb2.AccessAlert]:
    return [alert_of(e) for _, e in found if e.aggregate_id == subject]
