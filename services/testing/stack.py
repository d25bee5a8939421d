"""Test support: the real stack's coordinates, random names, and service
processes started exactly as operators start them (``medledger serve``)."""

from __future__ import annotations

import asyncio
import base64
import fcntl
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable, Mapping

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from medledger.ledger.note import NoteSigner
from medledger.runtime.settings import DEFAULT_PORTS, Topics
from medledger.testing.producers import TestProducers

ROOT = Path(__file__).resolve().parents[2]  # the checkout (services/testing/stack.py)
# One set of event-signing keys for the whole test session: every service a
# test starts signs with these and pins their public halves.
PRODUCERS = TestProducers()
KAFKA_PORT = int(os.environ.get("MEDLEDGER_KAFKA_PORT", "9092"))
PG_PORT = int(os.environ.get("MEDLEDGER_PG_PORT", "55432"))
BOOTSTRAP = os.environ.get("MEDLEDGER_KAFKA_BOOTSTRAP", f"127.0.0.1:{KAFKA_PORT}")
PG_SERVER_URL = f"postgresql://postgres@127.0.0.1:{PG_PORT}"
MEDLEDGER = str(Path(sys.executable).parent / "medledger")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports for test servers come from below the kernel's ephemeral range. A port
# the kernel handed out with bind(0) can be handed out again, between our check
# and the server's own bind, as the local port of any outgoing connection (a
# Kafka or PostgreSQL client): CI once failed on exactly that race.
_TEST_PORTS = range(max(1024, min(_ephemeral_low(), 32768) - 12000), min(_ephemeral_low(), 32768))
_handed_out: set[int] = set()
# Test processes running side by side (two pytest runs, a benchmark beside a
# suite) each take one of a few interleaved slices of those ports, claimed
# with a lock file held for the process's life: without it, two processes
# could each check the same port free and start servers on it, and a test
# talked to another test's identity service. No slice free: all the ports.
_SLICES = 4
_slice_lock: object = None
_own_ports: range | None = None


def _my_ports() -> range:
    global _slice_lock, _own_ports
    if _own_ports is None:
        _own_ports = _TEST_PORTS
        for index in range(_SLICES):
            lock = open(Path(tempfile.gettempdir()) / f"medledger-test-ports-{index}.lock", "a")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                lock.close()
                continue
            _slice_lock, _own_ports = lock, _TEST_PORTS[index::_SLICES]
            break
    return _own_ports


def free_port() -> int:
    """A loopback port nothing listens on, never handed out twice in this process."""
    for _ in range(10_000):
        port = random.choice(_my_ports())
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")


def unique(prefix: str) -> str:
    """A name no other test uses: lower-case, safe for topics and databases."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def service_environment(
    topics: Topics, database_for: Callable[[str], str], run_dir: Path, producer_env: Mapping[str, str],
    ledger_origin: str,
) -> dict[str, str]:
    """Environment for the service processes of one test: its own topics,
    databases (``database_for(service)`` names one), gRPC ports, run dir and a
    fresh checkpoint key; the session's event-signing keys."""
    env = dict(os.environ)
    env.update(
        MEDLEDGER_KAFKA_BOOTSTRAP=BOOTSTRAP,
        MEDLEDGER_TOPIC_PREFIX=topics.prefix,
        MEDLEDGER_RUN_DIR=str(run_dir),
        MEDLEDGER_LOG_LEVEL="INFO",
        **producer_env,
    )
    key_file = run_dir / "ledger-checkpoint.key"
    key_file.write_text(NoteSigner.generate(ledger_origin).signer_key + "\n")
    env["MEDLEDGER_LEDGER_SIGNING_KEY_FILE"] = str(key_file)
    env["MEDLEDGER_LEDGER_ORIGIN"] = ledger_origin
    kek_file = run_dir / "records-kek.key"  # every service can start, records included
    if not kek_file.exists():
        kek_file.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
        kek_file.chmod(0o600)
    env["MEDLEDGER_RECORDS_KEK_FILE"] = str(kek_file)
    for name in DEFAULT_PORTS:
        env[f"MEDLEDGER_{name.upper()}_DATABASE_URL"] = database_for(name)
        env[f"MEDLEDGER_{name.upper()}_PORT"] = str(free_port())
    env["MEDLEDGER_IDENTITY_ADDRESS"] = f"127.0.0.1:{env['MEDLEDGER_IDENTITY_PORT']}"
    env["MEDLEDGER_CONSENT_ADDRESS"] = f"127.0.0.1:{env['MEDLEDGER_CONSENT_PORT']}"  # the records service asks both
    env["MEDLEDGER_LEDGER_ADDRESS"] = f"127.0.0.1:{env['MEDLEDGER_LEDGER_PORT']}"
    return env


@asynccontextmanager
async def isolated_environment(
    name: str, producer_env: Mapping[str, str], run_dir: Path, ledger_origin: str
) -> AsyncIterator[tuple[dict[str, str], Topics]]:
    """For services a whole test module shares: topics (prefix ``name``) and
    databases of their own, the environment that points at them
    (service_environment), and both dropped afterwards."""
    from medledger.runtime.kafka import delete_topics, ensure_topics, topic_specs
    from medledger.runtime.postgres import drop_database

    topics = Topics(unique(name) + ".")
    await ensure_topics(BOOTSTRAP, topic_specs(topics))
    databases: list[str] = []

    def database_for(service: str) -> str:
        databases.append(f"{PG_SERVER_URL}/{unique('test_' + service)}")
        return databases[-1]

    try:
        yield service_environment(topics, database_for, run_dir, producer_env, ledger_origin), topics
    finally:
        await delete_topics(BOOTSTRAP, topics.all)
        for url in databases:
            await drop_database(url)


async def tear_down(processes: list["ServiceProcess"], database_urls: list[str], topics: Topics) -> None:
    """Stop a benchmark's or test's services (last started first), drop its
    databases and delete its topics."""
    from medledger.runtime.kafka import delete_topics
    from medledger.runtime.postgres import drop_database

    for process in reversed(processes):
        process.stop()
    for url in database_urls:
        await drop_database(url)
    await delete_topics(BOOTSTRAP, topics.all)


def health_status(address: str, service: str = "", timeout: float = 1.0) -> str:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def wait_until(predicate: object, timeout: float, interval: float = 0.1, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def until(condition: Callable[[], bool], what: str, timeout: float = 30, interval: float = 0.05) -> None:
    """wait_until for a test on the event loop: polls without blocking it."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(interval)


@dataclass
class ServiceProcess:
    """One service run as a real OS process, on its own port, database and topics."""

    name: str
    env: dict[str, str]
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None)
    # Its /metrics port: a free one unless given, so replicas and parallel
    # stacks never collide on the 915x defaults.
    metrics_port: int = 0
    # The ledger's tlog-tiles HTTP port: free too, for the same reason.
    tiles_port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def tiles_url(self) -> str:
        return f"http://127.0.0.1:{self.tiles_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> "ServiceProcess":
        self.metrics_port = self.metrics_port or free_port()
        self.env = dict(self.env, **{f"MEDLEDGER_{self.name.upper()}_METRICS_PORT": str(self.metrics_port)})
        if self.name == "ledger":
            self.tiles_port = self.tiles_port or free_port()
            self.env["MEDLEDGER_LEDGER_TILES_PORT"] = str(self.tiles_port)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([MEDLEDGER, "serve", self.name], env=self.env, stdout=log, stderr=log)
        log.close()
        return self

    def wait_serving(self, timeout: float = 60) -> "ServiceProcess":
        def serving() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            return health_status(self.address) == "SERVING"

        try:
            wait_until(serving, timeout, 0.05, f"{self.name} SERVING")
        except AssertionError:
            raise AssertionError(f"{self.name} not SERVING:\n{self.log_tail()}") from None
        return self

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL: a crash, no chance to clean up."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        """SIGTERM and wait: the graceful path operators use."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode if self.proc else None


def all_serving(*processes: ServiceProcess, timeout: float = 60) -> None:
    """Wait for services started together: they boot side by side (imports,
    migrations, catching up), so a stack is ready in the time of its slowest
    service rather than the sum of all."""
    for process in processes:
        process.wait_serving(timeout)
