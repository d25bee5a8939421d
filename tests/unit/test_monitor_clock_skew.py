"""Events dated beyond the allowed clock skew (MEDLEDGER_MONITOR_MAX_CLOCK_SKEW_S,
default 5 minutes) are dropped and counted, never counted in a window: a
future-dated burst neither raises an alert nor marks a window that would
silence the real one (docs/architecture.md, Decisions)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from medledger.monitor import metrics
from medledger.monitor.frames import frame
from medledger.monitor.hours import WorkingHours
from medledger.monitor.observations import from_the_future, occurred_ms, partition_of
from medledger.monitor.rules import Bucket, tally
from medledger.monitor.settings import MonitorSettings
from medledger.monitor.streams import MonitorStreams
from medledger.runtime.errors import SettingsError
from medledger.runtime.settings import Topics
from medledger.testing import monitor as m
from medledger.testing.stack import PRODUCERS

T = Topics()
NOW = datetime(2026, 3, 4, 10, 0, tzinfo=timezone.utc)
NOW_MS = int(NOW.timestamp() * 1000)
PARTITIONS = 3


def test_the_skew_defaults_to_5_minutes_and_is_bounded() -> None:
    base = {"MEDLEDGER_KAFKA_BOOTSTRAP": "k:9092"}
    assert MonitorSettings.from_env(base).max_clock_skew_s == 300
    assert MonitorSettings.from_env({**base, "MEDLEDGER_MONITOR_MAX_CLOCK_SKEW_S": "0"}).max_clock_skew_s == 0
    for bad in ("-1", "86401"):
        with pytest.raises(SettingsError, match="MEDLEDGER_MONITOR_MAX_CLOCK_SKEW_S"):
            MonitorSettings.from_env({**base, "MEDLEDGER_MONITOR_MAX_CLOCK_SKEW_S": bad})


def test_only_an_event_beyond_the_skew_is_from_the_future() -> None:
    skew_ms = 300_000
    for ahead_s, future in ((-3600, False), (0, False), (300, False), (301, True), (86400 * 365, True)):
        _, env = m.disclosure(T, "dr-a", "pat", "org-1", at=NOW + timedelta(seconds=ahead_s))
        assert occurred_ms(env) == NOW_MS + ahead_s * 1000
        assert from_the_future(env, NOW_MS, skew_ms) is future, ahead_s


def _streams() -> MonitorStreams:
    settings = MonitorSettings.from_env({"MEDLEDGER_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    return MonitorStreams(
        "127.0.0.1:1", T, PARTITIONS, settings.rules, WorkingHours({}), PRODUCERS.verifier(),
        _never_publish, {}, settings.max_clock_skew_s,
    )


async def _never_publish(firing: Any) -> str:
    raise AssertionError("the adapter publishes nothing in this test")


def test_a_future_dated_burst_neither_alerts_nor_silences_the_real_one() -> None:
    """61 reads by one practitioner dated a day ahead (a producer with a wrong
    clock, or a forged-looking date from a real producer) are dropped and
    counted as outcome="future"; the same practitioner's real burst afterwards
    raises its breadth alert as if the future one never happened."""
    streams = _streams()
    snoop = m.subject_on(0, PARTITIONS, prefix="practitioner")
    partition = partition_of(snoop, PARTITIONS)
    tables: dict[tuple[str, str, int], Bucket] = {}

    def read(rule: str, subject: str, start: int) -> Bucket:
        return tables.get((rule, subject, start), Bucket())

    def count(at: datetime) -> list[str]:
        reads = [m.disclosure(T, snoop, f"patient-{i}-{m.new_id()}", "org-1", at=at)[1] for i in range(61)]
        result = tally(streams.rules, streams._observed(partition, frame([e.SerializeToString() for e in reads]), NOW_MS), read)
        for rule, writes in result.writes.items():
            for subject, start, bucket in writes:
                tables[(rule, subject, start)] = bucket
        return [f.rule for f in result.firings]

    future_before = metrics.FROM_THE_FUTURE._value.get()
    counted_before = metrics.COUNTED._value.get()
    assert count(NOW + timedelta(days=1)) == []
    assert metrics.FROM_THE_FUTURE._value.get() - future_before == 61
    assert metrics.COUNTED._value.get() == counted_before
    assert tables == {}, "a dropped event wrote a bucket"
    assert count(NOW + timedelta(seconds=200)) == ["breadth"]  # within the skew: counted, fires once
    assert metrics.COUNTED._value.get() - counted_before == 61
