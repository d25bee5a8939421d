"""Test support: the real stack's coordinates, random names, and service
processes started exactly as operators start them (``medledger serve``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unique(prefix: str) -> str:
    """A name no other test uses: lower-case, safe for topics and databases."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


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


@dataclass
class ServiceProcess:
    """One service run as a real OS process, on its own port, database and topics."""

    name: str
    env: dict[str, str]
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "ServiceProcess":
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
            wait_until(serving, timeout, 0.2, f"{self.name} SERVING")
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
