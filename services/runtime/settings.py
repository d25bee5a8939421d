"""Typed settings read from environment variables, parsed once at start-up.

A required variable that is missing stops the process at once with an error
naming it; defaults exist only where a safe local value exists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from medledger.runtime.errors import SettingsError

if TYPE_CHECKING:
    from medledger.runtime.envelope import EnvelopeVerifier, EventSigner

_MISSING = object()


def env_str(name: str, default: object = _MISSING, env: Mapping[str, str] | None = None) -> str:
    """The variable's value; SettingsError naming it when required and missing."""
    source = os.environ if env is None else env
    value = source.get(name)
    if value is None or value == "":
        if default is _MISSING:
            raise SettingsError(f"required setting {name} is not set")
        return str(default)
    return value


def env_int(name: str, default: object = _MISSING, env: Mapping[str, str] | None = None) -> int:
    raw = env_str(name, default, env)
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"setting {name} must be an integer, got {raw!r}") from None


def env_float(name: str, default: object = _MISSING, env: Mapping[str, str] | None = None) -> float:
    raw = env_str(name, default, env)
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"setting {name} must be a number, got {raw!r}") from None


@dataclass(frozen=True)
class Topics:
    """Kafka topic names. A prefix lets tests and parallel stacks use their own topics."""

    prefix: str = ""

    def _name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    @property
    def identity_events(self) -> str:
        return self._name("identity.events")

    @property
    def consent_events(self) -> str:
        return self._name("consent.events")

    @property
    def records_events(self) -> str:
        return self._name("records.events")

    @property
    def access_events(self) -> str:
        return self._name("access.events")

    @property
    def access_alerts(self) -> str:
        return self._name("access.alerts")

    @property
    def ledger_entries(self) -> str:
        return self._name("ledger.entries")

    @property
    def ledger_checkpoints(self) -> str:
        return self._name("ledger.checkpoints")

    @property
    def ledger_rejected(self) -> str:
        return self._name("ledger.rejected")

    @property
    def event_topics(self) -> tuple[str, ...]:
        """The source-of-truth topics the ledger sequences: the four event topics and
        the access monitor's alerts (docs/architecture.md, Access monitor)."""
        return (self.identity_events, self.consent_events, self.records_events, self.access_events, self.access_alerts)

    @property
    def monitor_app_id(self) -> str:
        """The access monitor's faust app id: its consumer group, and the stem faust
        names its internal topics after."""
        return self._name(MONITOR_APP)

    @property
    def monitor_observations(self) -> str:
        """The monitor's repartition topic: the events its rules count, by subject."""
        return f"{self.monitor_app_id}-observations-repartition"

    def monitor_changelog(self, table: str) -> str:
        """The changelog topic faust keeps one of the monitor's tables in."""
        return f"{self.monitor_app_id}-{table}-changelog"

    @property
    def monitor_internal(self) -> tuple[str, ...]:
        """Every topic faust needs for the monitor; declared here because brokers
        never auto-create topics."""
        return (self.monitor_observations, *(self.monitor_changelog(t) for t in MONITOR_TABLES))

    @property
    def all(self) -> tuple[str, ...]:
        return (
            self.event_topics + (self.ledger_entries, self.ledger_checkpoints, self.ledger_rejected)
            + self.monitor_internal
        )


# The access monitor (services/monitor/): its faust app id and its tables, one per
# rule, each a changelog topic on Kafka.
MONITOR_APP = "medledger-monitor"
MONITOR_TABLES = ("breadth", "probing", "break-glass", "unusual-hours")


@dataclass(frozen=True)
class CommonSettings:
    """Settings every service reads. Service-specific settings extend these."""

    service: str
    grpc_host: str
    grpc_port: int
    # The plain-HTTP /metrics endpoint, on the gRPC host; 0 turns it off (runtime/metrics.py).
    metrics_port: int
    kafka_bootstrap: str
    database_url: str
    topics: Topics
    log_level: str
    run_dir: Path

    @classmethod
    def from_env(cls, service: str, default_port: int, env: Mapping[str, str] | None = None) -> "CommonSettings":
        upper = service.upper()
        return cls(
            service=service,
            grpc_host=env_str(f"MEDLEDGER_{upper}_HOST", "127.0.0.1", env),
            grpc_port=env_int(f"MEDLEDGER_{upper}_PORT", default_port, env),
            metrics_port=env_int(f"MEDLEDGER_{upper}_METRICS_PORT", DEFAULT_METRICS_PORTS.get(service, 0), env),
            kafka_bootstrap=env_str("MEDLEDGER_KAFKA_BOOTSTRAP", env=env),
            database_url=env_str(f"MEDLEDGER_{upper}_DATABASE_URL", env=env),
            topics=Topics(env_str("MEDLEDGER_TOPIC_PREFIX", "", env)),
            log_level=env_str("MEDLEDGER_LOG_LEVEL", "INFO", env),
            run_dir=Path(env_str("MEDLEDGER_RUN_DIR", ".run", env)),
        )


DEFAULT_PORTS: dict[str, int] = {"identity": 50051, "consent": 50052, "records": 50053, "ledger": 50054}
# Every process `medledger serve` runs: the services above and the access monitor,
# which serves only gRPC health and reflection (no API, no database).
PROCESS_PORTS: dict[str, int] = {**DEFAULT_PORTS, "monitor": 50055}
DEFAULT_METRICS_PORTS: dict[str, int] = {
    "identity": 9151, "consent": 9152, "records": 9153, "ledger": 9154, "monitor": 9155,
}


def _read_setting_file(variable: str, env: Mapping[str, str] | None) -> str:
    path = Path(env_str(variable, env=env))
    try:
        return path.read_text()
    except OSError as exc:
        raise SettingsError(f"setting {variable}: cannot read {path}: {exc.strerror}") from None


def event_signer(service: str, env: Mapping[str, str] | None = None) -> "EventSigner":
    """The service's event-signing key, from MEDLEDGER_<SERVICE>_EVENT_KEY_FILE
    (a note signer-key text named after the service)."""
    from medledger.ledger.note import NoteError
    from medledger.runtime.envelope import EventSigner

    variable = f"MEDLEDGER_{service.upper()}_EVENT_KEY_FILE"
    try:
        signer = EventSigner.from_key_text(_read_setting_file(variable, env))
    except NoteError as exc:
        raise SettingsError(f"setting {variable}: not a signer key: {exc}") from None
    if signer.service != service:
        raise SettingsError(f"setting {variable}: the key is named {signer.service!r}, not {service!r}")
    return signer


def event_verifier(topics: Topics, env: Mapping[str, str] | None = None) -> "EnvelopeVerifier":
    """The pinned producer keys (MEDLEDGER_EVENT_PRODUCER_KEYS_FILE, one
    verifier key per line) and the producer policy for these topics."""
    from medledger.runtime.envelope import EnvelopeVerifier, parse_producer_keys, topic_kinds

    variable = "MEDLEDGER_EVENT_PRODUCER_KEYS_FILE"
    try:
        keys = parse_producer_keys(_read_setting_file(variable, env))
    except ValueError as exc:
        raise SettingsError(f"setting {variable}: {exc}") from None
    if not keys:
        raise SettingsError(f"setting {variable}: the file lists no producer key")
    return EnvelopeVerifier(keys, topic_kinds(topics.prefix))
