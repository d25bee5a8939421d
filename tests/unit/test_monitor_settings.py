"""The monitor's settings and working hours: documented defaults, and clear
refusals of what would make a rule wrong."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from medledger.monitor.hours import parse_working_hours
from medledger.monitor.rules import CountingRule, QuietPeriodRule
from medledger.monitor.settings import MonitorSettings
from medledger.runtime.errors import SettingsError

BASE = {"MEDLEDGER_KAFKA_BOOTSTRAP": "k:9092"}


def _ms(year: int, month: int, day: int, hour: int, minute: int, *, tz: timezone = timezone.utc) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=tz).timestamp() * 1000)


def test_defaults_are_the_documented_ones() -> None:
    s = MonitorSettings.from_env(BASE)
    rules = {r.name: r for r in s.rules}
    assert set(rules) == {"breadth", "probing", "break-glass"}  # unusual hours: off by default
    expected = {"breadth": (50, 3600, 300), "probing": (20, 600, 60), "break-glass": (3, 86400, 3600)}
    for name, (threshold, size, step) in expected.items():
        rule = rules[name]
        assert isinstance(rule, CountingRule)
        assert (rule.threshold, rule.windows.size_s, rule.windows.step_s) == (threshold, size, step)
    assert (s.grpc_port, s.metrics_port, s.topics.access_alerts) == (50055, 9155, "access.alerts")


def test_working_hours_turn_the_unusual_hours_rule_on() -> None:
    s = MonitorSettings.from_env({**BASE, "MEDLEDGER_MONITOR_WORKING_HOURS": "*=Mon-Fri 07:00-19:00 UTC"})
    (quiet,) = [r for r in s.rules if isinstance(r, QuietPeriodRule)]
    assert quiet.lookback_s == 30 * 86400


@pytest.mark.parametrize("env", [
    {"MEDLEDGER_MONITOR_BREADTH_THRESHOLD": "0"},
    {"MEDLEDGER_MONITOR_PROBING_THRESHOLD": "100000"},
    {"MEDLEDGER_MONITOR_BREADTH_WINDOW_S": "3601"},  # not a whole number of 300 s steps
    {"MEDLEDGER_MONITOR_BREAK_GLASS_WINDOW_S": str(20 * 86400), "MEDLEDGER_MONITOR_BREAK_GLASS_STEP_S": "86400"},
    {"MEDLEDGER_MONITOR_WORKING_HOURS": "*=Mon-Fri 07:00-19:00 Mars/Olympus"},
    {"MEDLEDGER_MONITOR_WORKING_HOURS": "*=Mon-Fri 07:00-19:00 UTC", "MEDLEDGER_MONITOR_UNUSUAL_HOURS_LOOKBACK_DAYS": "60"},
])
def test_settings_that_would_break_a_rule_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        MonitorSettings.from_env({**BASE, **env})


def test_working_hours_per_organization_with_a_default() -> None:
    hours = parse_working_hours("*=Mon-Fri 07:00-19:00 UTC; org-night=Mon-Sun 22:00-06:00 Europe/Paris")
    assert hours.outside("org-any", _ms(2026, 3, 4, 2, 30))  # Wednesday 02:30 UTC
    assert not hours.outside("org-any", _ms(2026, 3, 4, 10, 0))
    assert hours.outside("org-any", _ms(2026, 3, 7, 10, 0))  # Saturday
    assert not hours.outside("org-night", _ms(2026, 3, 4, 2, 30))  # 03:30 in Paris: its night shift
    assert hours.outside("org-night", _ms(2026, 3, 4, 10, 0))
    assert not hours.outside("", _ms(2026, 3, 4, 2, 30))  # a patient's own read belongs to no organization


def test_organizations_without_a_schedule_are_never_unusual() -> None:
    hours = parse_working_hours("org-1=Mon-Sun 08:00-09:00 UTC")
    assert not hours.outside("org-2", _ms(2026, 3, 4, 2, 30))
    assert hours.outside("org-1", _ms(2026, 3, 4, 2, 30))
    assert not parse_working_hours("").enabled


@pytest.mark.parametrize("text", [
    "Mon-Fri 07:00-19:00 UTC", "*=Mon-Fri 7-19 UTC", "*=Funday 07:00-19:00 UTC", "*=Mon-Fri 07:00-25:00 UTC",
    "*=Mon 07:00-19:00 UTC; *=Tue 07:00-19:00 UTC", "*=Mon-Fri 24:00-06:00 UTC",
])
def test_malformed_working_hours_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_working_hours(text)


def test_readme_documents_every_monitor_setting() -> None:
    readme = (Path(__file__).resolve().parents[2] / "services" / "monitor" / "README.md").read_text()
    for name in (
        "MEDLEDGER_MONITOR_BREADTH_THRESHOLD", "MEDLEDGER_MONITOR_BREADTH_WINDOW_S", "MEDLEDGER_MONITOR_BREADTH_STEP_S",
        "MEDLEDGER_MONITOR_PROBING_THRESHOLD", "MEDLEDGER_MONITOR_BREAK_GLASS_THRESHOLD",
        "MEDLEDGER_MONITOR_WORKING_HOURS", "MEDLEDGER_MONITOR_UNUSUAL_HOURS_LOOKBACK_DAYS",
        "MEDLEDGER_MONITOR_EVENT_KEY_FILE", "MEDLEDGER_MONITOR_PORT", "MEDLEDGER_MONITOR_METRICS_PORT",
    ):
        assert name in readme, name


def test_faust_connects_with_the_same_kafka_security_as_every_service(tmp_path: Path) -> None:
    """The monitor's faust app gets TLS and SCRAM exactly as runtime/transport.py
    builds them for aiokafka (production's only listener is SASL_SSL)."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from medledger.monitor.streams import faust_credentials
    from medledger.runtime.transport import kafka_security

    password = tmp_path / "password"
    password.write_text("s3cret\n")
    env = {
        "MEDLEDGER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "MEDLEDGER_KAFKA_SASL_USERNAME": "medledger-monitor",
        "MEDLEDGER_KAFKA_SASL_PASSWORD_FILE": str(password),
    }
    options = kafka_security(env)
    given = credentials_to_aiokafka_auth(faust_credentials(options))
    for key in ("security_protocol", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password", "ssl_context"):
        assert given[key] == options[key], key
    assert faust_credentials(kafka_security({})) is None
    tls = kafka_security({"MEDLEDGER_KAFKA_SECURITY_PROTOCOL": "SSL"})
    assert credentials_to_aiokafka_auth(faust_credentials(tls)) == {"security_protocol": "SSL", "ssl_context": tls["ssl_context"]}
