"""Session-wide real Kafka and PostgreSQL, started through the project's own
deploy scripts when they are not running yet; random names per test."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator

import pytest

from medledger.runtime.kafka import delete_topics, ensure_topics, topic_specs
from medledger.runtime.postgres import drop_database, ensure_database
from medledger.runtime.settings import Topics
from medledger.testing.identity import IdentityHarness, generate_key, identity_env
from medledger.testing.stack import (
    BOOTSTRAP,
    KAFKA_PORT,
    PG_PORT,
    PG_SERVER_URL,
    PRODUCERS,
    ROOT,
    ServiceProcess,
    free_port,
    port_open,
    service_environment,
    unique,
)

LEDGER_ORIGIN = "test.medledger.local/ledger"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Integration tests get the marker by location; tests that stop the shared
    broker or database ('disruptive') run last so they cannot disturb others."""
    for item in items:
        if "integration" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.integration)
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "disruptive: stops and restarts the shared Kafka or PostgreSQL")


@pytest.fixture(scope="session")
def stack() -> None:
    """Kafka and PostgreSQL, started by deploy/stack.sh infra if not already up."""
    if not (port_open(KAFKA_PORT) and port_open(PG_PORT)):
        subprocess.run(["bash", str(ROOT / "deploy" / "stack.sh"), "infra"], check=True)
    assert port_open(KAFKA_PORT), "Kafka is not listening"
    assert port_open(PG_PORT), "PostgreSQL is not listening"


@pytest.fixture
async def topics(stack: None) -> AsyncIterator[Topics]:
    """A fresh set of every MedLedger topic under a random prefix, deleted after
    the test so a long-lived local broker does not accumulate them."""
    t = Topics(unique("t") + ".")
    await ensure_topics(BOOTSTRAP, topic_specs(t))
    yield t
    await delete_topics(BOOTSTRAP, t.all)


@pytest.fixture
async def database_factory(stack: None) -> AsyncIterator[Callable[[str], str]]:
    """Make random databases (dropped after the test); returns their URLs."""
    made: list[str] = []

    def make(service: str) -> str:
        url = f"{PG_SERVER_URL}/{unique('test_' + service)}"
        made.append(url)
        return url

    yield make
    for url in made:
        await drop_database(url)


@pytest.fixture
async def database_url(database_factory: Callable[[str], str]) -> str:
    url = database_factory("db")
    await ensure_database(url)
    return url


@pytest.fixture(scope="session")
def producer_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The session's event-signing key files and pinned producer keys."""
    return PRODUCERS.write(tmp_path_factory.mktemp("producers"))


@pytest.fixture
def service_env(
    topics: Topics, database_factory: Callable[[str], str], tmp_path: Path, producer_env: dict[str, str]
) -> dict[str, str]:
    """Environment for service processes of one test: own topics, databases, ports."""
    return service_environment(topics, database_factory, tmp_path, producer_env, LEDGER_ORIGIN)


@pytest.fixture
def spawn(service_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Start services as real processes; every one is stopped after the test."""
    started: list[ServiceProcess] = []

    def start(name: str, **overrides: str) -> ServiceProcess:
        env = dict(service_env, **overrides)
        port = int(env[f"MEDLEDGER_{name.upper()}_PORT"])
        proc = ServiceProcess(name, env, port, tmp_path / f"{name}-{len(started)}.log").start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def free_port_factory() -> Callable[[], int]:
    return free_port


@pytest.fixture
async def isolated_identity(
    spawn: Callable[..., ServiceProcess], tmp_path: Path
) -> AsyncIterator[IdentityHarness]:
    """An identity service (the one other services of the test trust) whose
    events go to topics of their own, so they stay out of a ledger under test."""
    own = Topics(unique("ti") + ".")
    await ensure_topics(BOOTSTRAP, topic_specs(own))
    operator_key = generate_key()
    env = identity_env(tmp_path, operator_key)
    proc = spawn("identity", MEDLEDGER_TOPIC_PREFIX=own.prefix, **env).wait_serving()
    harness = IdentityHarness(proc.address, operator_key, proc, env)
    yield harness
    harness.close()
    proc.stop()
    await delete_topics(BOOTSTRAP, own.all)


@pytest.fixture
def auditor_metadata(isolated_identity: IdentityHarness) -> tuple[tuple[str, str], ...]:
    """Bearer metadata of an AUDITOR, as the ledger's entry reads require."""
    return isolated_identity.auditor().metadata


@pytest.fixture
def identity_service(spawn: Callable[..., ServiceProcess], tmp_path: Path) -> Iterator[IdentityHarness]:
    """A SERVING identity service with a bootstrap operator organization."""
    operator_key = generate_key()
    env = identity_env(tmp_path, operator_key)
    process = spawn("identity", **env).wait_serving()
    harness = IdentityHarness(process.address, operator_key, process, env)
    yield harness
    harness.close()
