"""gRPC over TLS and mutual TLS against a real service process, and the
refusal to serve plaintext beyond loopback."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from medledger.testing.stack import MEDLEDGER, ServiceProcess, wait_until
from tests.tls_support import ThrowawayCA


def _health(channel: grpc.Channel) -> str:
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    except grpc.RpcError as exc:
        return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def _serving_over(channel_factory: Callable[[], grpc.Channel]) -> Callable[[], bool]:
    def check() -> bool:
        with channel_factory() as channel:
            return _health(channel) == "SERVING"

    return check


def test_tls_service_answers_verified_clients_only(spawn: Callable[..., ServiceProcess], tmp_path: Path) -> None:
    ca = ThrowawayCA(tmp_path)
    cert, key = ca.issue("records", server=True)
    proc = spawn("records", MEDLEDGER_GRPC_TLS_CERT_FILE=str(cert), MEDLEDGER_GRPC_TLS_KEY_FILE=str(key))
    trusted = grpc.ssl_channel_credentials(root_certificates=ca.ca_file.read_bytes())
    wait_until(_serving_over(lambda: grpc.secure_channel(proc.address, trusted)), 60, 0.3, "SERVING over TLS")
    with grpc.insecure_channel(proc.address) as plaintext:
        assert _health(plaintext) == "UNAVAILABLE"  # no plaintext on a TLS port
    (tmp_path / "other").mkdir()
    stranger = ThrowawayCA(tmp_path / "other")
    with grpc.secure_channel(proc.address, grpc.ssl_channel_credentials(stranger.ca_file.read_bytes())) as untrusted:
        assert _health(untrusted) == "UNAVAILABLE"  # the client refuses a server its CA did not sign
    # operators' own commands speak TLS when given the CA
    env = dict(proc.env, MEDLEDGER_GRPC_TLS_CA_FILE=str(ca.ca_file))
    out = subprocess.run([MEDLEDGER, "health", "records"], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "SERVING" in out.stdout


def test_mutual_tls_requires_a_client_certificate(spawn: Callable[..., ServiceProcess], tmp_path: Path) -> None:
    ca = ThrowawayCA(tmp_path)
    cert, key = ca.issue("ledger", server=True)
    client_cert, client_key = ca.issue("auditor-tool", server=False)
    proc = spawn(
        "records",
        MEDLEDGER_GRPC_TLS_CERT_FILE=str(cert),
        MEDLEDGER_GRPC_TLS_KEY_FILE=str(key),
        MEDLEDGER_GRPC_TLS_CLIENT_CA_FILE=str(ca.ca_file),
    )
    with_cert = grpc.ssl_channel_credentials(
        ca.ca_file.read_bytes(), private_key=client_key.read_bytes(), certificate_chain=client_cert.read_bytes()
    )
    wait_until(_serving_over(lambda: grpc.secure_channel(proc.address, with_cert)), 60, 0.3, "SERVING over mTLS")
    without_cert = grpc.ssl_channel_credentials(ca.ca_file.read_bytes())
    with grpc.secure_channel(proc.address, without_cert) as channel:
        assert _health(channel) == "UNAVAILABLE"


def test_plaintext_beyond_loopback_is_refused_with_a_clear_error(spawn: Callable[..., ServiceProcess]) -> None:
    proc = spawn("records", MEDLEDGER_RECORDS_HOST="0.0.0.0")
    assert proc.proc is not None
    assert proc.proc.wait(30) == 2
    assert "refusing plaintext gRPC on 0.0.0.0" in proc.log_tail()
