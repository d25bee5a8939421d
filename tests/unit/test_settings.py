from __future__ import annotations

import pytest

from medledger.runtime.errors import SettingsError
from medledger.runtime.settings import CommonSettings, Topics, env_int


def test_missing_required_setting_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="MEDLEDGER_LEDGER_DATABASE_URL"):
        CommonSettings.from_env("ledger", 50054, env={"MEDLEDGER_KAFKA_BOOTSTRAP": "127.0.0.1:9092"})


def test_malformed_integer_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="MEDLEDGER_LEDGER_PORT"):
        env_int("MEDLEDGER_LEDGER_PORT", env={"MEDLEDGER_LEDGER_PORT": "fifty"})


def test_settings_read_from_environment() -> None:
    s = CommonSettings.from_env(
        "consent",
        50052,
        env={
            "MEDLEDGER_KAFKA_BOOTSTRAP": "k:9092",
            "MEDLEDGER_CONSENT_DATABASE_URL": "postgresql://x/y",
            "MEDLEDGER_CONSENT_PORT": "6000",
            "MEDLEDGER_TOPIC_PREFIX": "p.",
        },
    )
    assert (s.grpc_port, s.kafka_bootstrap, s.database_url) == (6000, "k:9092", "postgresql://x/y")
    assert s.topics.consent_events == "p.consent.events"


def test_topics_prefix_applies_to_every_topic() -> None:
    names = Topics("x.").all
    # five sequenced topics, the ledger's three, the monitor's repartition topic and four changelogs
    assert len(names) == 13 == len(set(names)) and all(n.startswith("x.") for n in names)
    assert Topics().event_topics == (
        "identity.events", "consent.events", "records.events", "access.events", "access.alerts",
    )
    assert Topics("x.").monitor_changelog("breadth") == "x.medledger-monitor-breadth-changelog"
