"""The access monitor's settings (services/monitor/README.md), read once at start.

Each counting rule has a threshold, a window and a step (the window a whole
number of steps); defaults are the issue's: breadth more than 50 distinct
patients in 1 hour, probing more than 20 denials in 10 minutes, break-glass
more than 3 in 24 hours. Unusual hours is off until working hours are given.
Windows are bounded so the tables' changelogs (32 days, runtime/kafka.py) always
hold every bucket a rule still reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from medledger.monitor.hours import WorkingHours, parse_working_hours
from medledger.monitor.observations import BREADTH, BREAK_GLASS, PROBING, UNUSUAL_HOURS
from medledger.monitor.rules import CountingRule, QuietPeriodRule, Rule, Windows
from medledger.runtime.errors import SettingsError
from medledger.runtime.kafka import MONITOR_STATE_RETENTION_MS
from medledger.runtime.settings import PROCESS_PORTS, DEFAULT_METRICS_PORTS, Topics, env_int, env_str

HOUR, DAY = 3600, 24 * 3600
MAX_THRESHOLD = 1000  # a bucket holds threshold + 1 items: keeps table values small
# (setting stem, rule, default threshold, window, step)
COUNTING_RULES = (
    ("BREADTH", BREADTH, 50, HOUR, 300),
    ("PROBING", PROBING, 20, 600, 60),
    ("BREAK_GLASS", BREAK_GLASS, 3, DAY, HOUR),
)
QUIET_BUCKET_S = HOUR
# How far an event's occurred_at may lie ahead of the time the monitor received it
# before it is dropped (observations.from_the_future): producers' clocks drift.
DEFAULT_MAX_CLOCK_SKEW_S = 300


@dataclass(frozen=True)
class MonitorSettings:
    grpc_host: str
    grpc_port: int
    metrics_port: int
    kafka_bootstrap: str
    topics: Topics
    log_level: str
    rules: tuple[Rule, ...]
    working_hours: WorkingHours
    max_clock_skew_s: int = DEFAULT_MAX_CLOCK_SKEW_S
    # faust's data directory (empty with the memory store, but faust makes it):
    # under the run directory, not wherever the process was started.
    data_dir: Path = Path(".run") / "monitor"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MonitorSettings:
        rules: list[Rule] = [
            _counting_rule(stem, name, threshold, window_s, step_s, env)
            for stem, name, threshold, window_s, step_s in COUNTING_RULES
        ]
        try:
            hours = parse_working_hours(env_str("MEDLEDGER_MONITOR_WORKING_HOURS", "", env))
        except ValueError as exc:
            raise SettingsError(f"setting MEDLEDGER_MONITOR_WORKING_HOURS: {exc}") from None
        if hours.enabled:
            days = env_int("MEDLEDGER_MONITOR_UNUSUAL_HOURS_LOOKBACK_DAYS", 30, env)
            rules.append(QuietPeriodRule(UNUSUAL_HOURS, QUIET_BUCKET_S, days * DAY))
        skew_s = env_int("MEDLEDGER_MONITOR_MAX_CLOCK_SKEW_S", DEFAULT_MAX_CLOCK_SKEW_S, env)
        if not 0 <= skew_s <= DAY:
            raise SettingsError(f"setting MEDLEDGER_MONITOR_MAX_CLOCK_SKEW_S must be between 0 and {DAY}, got {skew_s}")
        for rule in rules:
            if rule.reach_s * 1000 > MONITOR_STATE_RETENTION_MS:
                raise SettingsError(
                    f"the {rule.name} rule reads {rule.reach_s // DAY} days back, more than its changelog keeps "
                    f"({MONITOR_STATE_RETENTION_MS // 1000 // DAY} days): shorten its window"
                )
        return cls(
            grpc_host=env_str("MEDLEDGER_MONITOR_HOST", "127.0.0.1", env),
            grpc_port=env_int("MEDLEDGER_MONITOR_PORT", PROCESS_PORTS["monitor"], env),
            metrics_port=env_int("MEDLEDGER_MONITOR_METRICS_PORT", DEFAULT_METRICS_PORTS["monitor"], env),
            kafka_bootstrap=env_str("MEDLEDGER_KAFKA_BOOTSTRAP", env=env),
            topics=Topics(env_str("MEDLEDGER_TOPIC_PREFIX", "", env)),
            log_level=env_str("MEDLEDGER_LOG_LEVEL", "INFO", env),
            rules=tuple(rules),
            working_hours=hours,
            max_clock_skew_s=skew_s,
            data_dir=Path(env_str("MEDLEDGER_RUN_DIR", ".run", env)) / "monitor",
        )


def _counting_rule(
    stem: str, name: str, threshold: int, window_s: int, step_s: int, env: Mapping[str, str] | None
) -> CountingRule:
    prefix = f"MEDLEDGER_MONITOR_{stem}"
    threshold = env_int(f"{prefix}_THRESHOLD", threshold, env)
    window_s = env_int(f"{prefix}_WINDOW_S", window_s, env)
    step_s = env_int(f"{prefix}_STEP_S", step_s, env)
    if not 0 < threshold <= MAX_THRESHOLD:
        raise SettingsError(f"setting {prefix}_THRESHOLD must be between 1 and {MAX_THRESHOLD}, got {threshold}")
    try:
        return CountingRule(name, Windows(window_s, step_s), threshold)
    except ValueError as exc:
        raise SettingsError(f"settings {prefix}_WINDOW_S and {prefix}_STEP_S: {exc}") from None
