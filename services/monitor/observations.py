"""Which events the monitor's rules count, reduced to observations. Pure.

- breadth: every RecordsDisclosed, for its requester, counting its patient;
- probing: every AccessDecided with DECISION_DENY, for its requester;
- break-glass: every BreakGlassInvoked, for its practitioner;
- unusual hours: a RecordsDisclosed for an organization outside that
  organization's working hours (hours.py), for its requester.

Nothing else counts (an ALLOW decision is followed by the RecordsDisclosed that
counts the read). Counting rules other than breadth count event ids, so one
event is never two; breadth counts distinct patients.
"""

from __future__ import annotations

import zlib

from google.protobuf.message import DecodeError, Message

from medledger.monitor.hours import WorkingHours
from medledger.monitor.rules import Observation
from medledger.v1 import consent_pb2, events_pb2, records_pb2

BREADTH, PROBING, BREAK_GLASS, UNUSUAL_HOURS = "breadth", "probing", "break-glass", "unusual-hours"

ACCESS_DECIDED = "medledger.v1.AccessDecided"
RECORDS_DISCLOSED = "medledger.v1.RecordsDisclosed"
BREAK_GLASS_INVOKED = "medledger.v1.BreakGlassInvoked"
# The logical topic each counted type is published on (runtime/envelope.py,
# PRODUCER_POLICY): the monitor verifies an envelope against it wherever it read it.
SOURCE_TOPIC = {
    ACCESS_DECIDED: "access.events",
    RECORDS_DISCLOSED: "access.events",
    BREAK_GLASS_INVOKED: "consent.events",
}
_MESSAGES: dict[str, type[Message]] = {
    ACCESS_DECIDED: consent_pb2.AccessDecided,
    RECORDS_DISCLOSED: records_pb2.RecordsDisclosed,
    BREAK_GLASS_INVOKED: consent_pb2.BreakGlassInvoked,
}


def occurred_ms(env: events_pb2.EventEnvelope) -> int:
    return env.occurred_at.seconds * 1000 + env.occurred_at.nanos // 1_000_000


def _payload(env: events_pb2.EventEnvelope) -> Message | None:
    message_type = _MESSAGES.get(env.event_type)
    if message_type is None:
        return None
    message = message_type()
    try:
        return message if env.payload.Unpack(message) else None
    except DecodeError:
        return None


def subject_of(env: events_pb2.EventEnvelope) -> str | None:
    """Whom some rule would count this event for; None when no rule counts it.
    For routing only: the envelope is not verified yet."""
    payload = _payload(env)
    if isinstance(payload, consent_pb2.AccessDecided):
        return payload.requester_id if payload.decision == consent_pb2.DECISION_DENY else None
    if isinstance(payload, records_pb2.RecordsDisclosed):
        return payload.requester_id
    if isinstance(payload, consent_pb2.BreakGlassInvoked):
        return payload.practitioner_id
    return None


def observations(env: events_pb2.EventEnvelope, hours: WorkingHours) -> list[tuple[str, Observation]]:
    """What the rules count of one verified envelope, as (rule name, observation)."""
    payload = _payload(env)
    at = occurred_ms(env)
    if isinstance(payload, consent_pb2.AccessDecided):
        if payload.decision != consent_pb2.DECISION_DENY or not payload.requester_id:
            return []
        return [(PROBING, Observation(payload.requester_id, env.event_id, env.event_id, payload.patient_id, at))]
    if isinstance(payload, records_pb2.RecordsDisclosed):
        if not payload.requester_id or not payload.patient_id:
            return []
        read = Observation(payload.requester_id, payload.patient_id, env.event_id, payload.patient_id, at)
        counted = [(BREADTH, read)]
        if hours.enabled and hours.outside(payload.organization_id, at):
            counted.append((UNUSUAL_HOURS, Observation(read.subject, env.event_id, env.event_id, read.patient_id, at)))
        return counted
    if isinstance(payload, consent_pb2.BreakGlassInvoked) and payload.practitioner_id:
        return [(BREAK_GLASS, Observation(payload.practitioner_id, env.event_id, env.event_id, payload.patient_id, at))]
    return []


def from_the_future(env: events_pb2.EventEnvelope, received_ms: int, max_skew_ms: int) -> bool:
    """Whether the event claims to have occurred more than ``max_skew_ms`` after
    the monitor received it. Such an event is dropped, not counted: its bucket
    would lie ahead of every real one, and an alert mark there would silence the
    rule for that subject until real time caught up (docs/architecture.md,
    Decisions: the monitor drops events from the future). Not clamped to the
    receive time either: a replay after a crash would put it in another window
    and could raise a second alert with another id."""
    return occurred_ms(env) > received_ms + max_skew_ms


def partition_of(subject: str, partitions: int) -> int:
    """The repartition topic's partition for a subject: the same in every process
    and on every restart (unlike ``hash``), so one subject's state stays in one
    table partition."""
    return zlib.crc32(subject.encode()) % partitions
