"""What the monitor counts (observations.py), how it forwards it (frames.py), and
the AccessAlert it publishes (alerts.py): deterministic, signed, accepted only
from the monitor."""

from __future__ import annotations

import uuid
import zlib
from datetime import datetime, timezone

import pytest

from medledger.monitor.alerts import alert_envelope, alert_id
from medledger.monitor.frames import Frames, frame, unframe
from medledger.monitor.hours import WorkingHours, parse_working_hours
from medledger.monitor.observations import observations, partition_of, subject_of
from medledger.monitor.rules import Counted, Firing
from medledger.runtime.envelope import UnauthenticatedEvent
from medledger.runtime.settings import Topics
from medledger.testing import monitor as m
from medledger.testing.stack import PRODUCERS
from medledger.v1 import events_pb2, monitor_pb2

T = Topics()
NO_HOURS = WorkingHours({})
NIGHT = datetime(2026, 3, 4, 2, 30, tzinfo=timezone.utc)  # a Wednesday, 02:30 UTC
DAY = datetime(2026, 3, 4, 10, 0, tzinfo=timezone.utc)


def _firing(**overrides: object) -> Firing:
    values: dict[str, object] = dict(
        rule="breadth", subject="dr-a", window_start_s=1_800_000_000, window_end_s=1_800_003_600, threshold=2,
        counted=(Counted("p1", "e1", "p1"), Counted("p2", "e2", "p2"), Counted("p3", "e3", "p3")),
    )
    values.update(overrides)
    return Firing(**values)  # type: ignore[arg-type]


# ---- observations ------------------------------------------------------------------------


def test_only_denials_disclosures_and_break_glasses_count() -> None:
    _, deny = m.decision(T, "req", "pat")
    _, allow = m.decision(T, "req", "pat", allow=True)
    _, read = m.disclosure(T, "dr-a", "pat", "org-1")
    _, glass = m.break_glass(T, "dr-b", "pat", "org-1")
    assert [(r, o.subject, o.item) for r, o in observations(deny, NO_HOURS)] == [("probing", "req", deny.event_id)]
    assert observations(allow, NO_HOURS) == [] and subject_of(allow) is None
    assert [(r, o.subject, o.item) for r, o in observations(read, NO_HOURS)] == [("breadth", "dr-a", "pat")]
    assert [(r, o.subject) for r, o in observations(glass, NO_HOURS)] == [("break-glass", "dr-b")]
    assert [subject_of(e) for e in (deny, read, glass)] == ["req", "dr-a", "dr-b"]


def test_a_read_outside_its_organizations_hours_also_counts_for_unusual_hours() -> None:
    hours = parse_working_hours("*=Mon-Fri 07:00-19:00 UTC")
    _, night = m.disclosure(T, "dr-a", "pat", "org-1", at=NIGHT)
    _, day = m.disclosure(T, "dr-a", "pat", "org-1", at=DAY)
    _, patient_reading = m.disclosure(T, "pat", "pat", "", at=NIGHT)  # no organization: not a practitioner's read
    assert [r for r, _ in observations(night, hours)] == ["breadth", "unusual-hours"]
    assert [r for r, _ in observations(day, hours)] == ["breadth"]
    assert [r for r, _ in observations(patient_reading, hours)] == ["breadth"]
    assert [r for r, _ in observations(night, NO_HOURS)] == ["breadth"]


def test_events_nobody_counts_are_not_routed() -> None:
    not_counted = events_pb2.EventEnvelope(event_type="medledger.v1.ConsentGranted")
    assert subject_of(not_counted) is None
    no_payload = events_pb2.EventEnvelope(event_type="medledger.v1.AccessDecided")
    assert subject_of(no_payload) is None and observations(no_payload, NO_HOURS) == []


def test_a_subject_always_lands_on_the_same_partition() -> None:
    assert partition_of("dr-a", 3) == zlib.crc32(b"dr-a") % 3
    assert {partition_of(f"s{i}", 3) for i in range(30)} == {0, 1, 2}


# ---- frames -----------------------------------------------------------------------------


def test_frames_carry_the_exact_envelope_bytes() -> None:
    values = [b"", b"a", bytes(range(256)) * 3]
    assert list(unframe(frame(values))) == values
    with pytest.raises(ValueError):
        list(unframe(frame(values)[:-1]))
    with pytest.raises(ValueError):
        list(unframe(b"\x00\x00"))


def test_frames_stay_under_their_limit_and_keep_each_partitions_order() -> None:
    frames = Frames(limit=100)
    for i in range(30):
        frames.add(i % 2, bytes([i]) * 20)
    frames.add(0, b"x" * 500)  # larger than a frame: travels alone
    drained = frames.drain()
    assert all(len(f) <= 100 for _, f in drained if b"x" * 500 not in f)
    for partition in (0, 1):
        got = [e for p, f in drained if p == partition for e in unframe(f)]
        assert got == [bytes([i]) * 20 for i in range(30) if i % 2 == partition] + ([b"x" * 500] if partition == 0 else [])
    assert frames.drain() == []


# ---- alerts -----------------------------------------------------------------------------


def test_alert_ids_are_uuids_of_rule_subject_and_window_ordered_by_window_end() -> None:
    a = uuid.UUID(alert_id("breadth", "dr-a", 100, 3700))
    assert a.version == 8 and a.variant == uuid.RFC_4122
    assert a.int >> 80 == 3_700_000  # the window end's milliseconds, like a UUIDv7
    assert alert_id("breadth", "dr-a", 100, 3700) == str(a)
    others = {alert_id("probing", "dr-a", 100, 3700), alert_id("breadth", "dr-b", 100, 3700),
              alert_id("breadth", "dr-a", 400, 4000)}
    assert str(a) not in others and len(others) == 3


def test_the_same_firing_always_seals_to_the_same_bytes() -> None:
    signer = PRODUCERS.signers["monitor"]
    first, again = signer.seal(alert_envelope(_firing())), signer.seal(alert_envelope(_firing()))
    assert first == again
    env = PRODUCERS.verifier().open("access.alerts", first)
    alert = monitor_pb2.AccessAlert()
    env.payload.Unpack(alert)
    assert (env.aggregate_id, env.producer, env.actor) == ("dr-a", "monitor", "")
    assert env.occurred_at.seconds == alert.window_end.seconds == 1_800_003_600
    assert (alert.rule, alert.count, alert.threshold) == (monitor_pb2.ALERT_RULE_BREADTH, 3, 2)
    assert list(alert.triggering_event_ids) == ["e1", "e2", "e3"] and list(alert.patient_ids) == ["p1", "p2", "p3"]
    assert signer.seal(alert_envelope(_firing(counted=_firing().counted[:2]))) != first


def test_only_the_monitor_may_publish_alerts() -> None:
    env = alert_envelope(_firing())
    forged = PRODUCERS.forgeries(env, not_allowed="consent")
    assert len(forged) == 5
    for kind, value in forged.items():
        with pytest.raises(UnauthenticatedEvent):
            PRODUCERS.verifier().open("access.alerts", value)
            pytest.fail(f"a forgery ({kind}) passed")
    genuine = PRODUCERS.signers["monitor"].seal(env)
    with pytest.raises(UnauthenticatedEvent):  # an alert is not an event of any other topic
        PRODUCERS.verifier().open("access.events", genuine)
