"""Transport security settings: what each setting turns on, and the clear
errors for settings that contradict each other."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from medledger.runtime.errors import SettingsError
from medledger.runtime.transport import GrpcTls, is_loopback, kafka_security
from tests.tls_support import ThrowawayCA


@pytest.fixture
def ca(tmp_path: Path) -> ThrowawayCA:
    return ThrowawayCA(tmp_path)


def test_loopback_addresses() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.5", "medledger-ledger"))


def test_plaintext_is_allowed_only_on_loopback_unless_intended() -> None:
    assert GrpcTls.from_env({}).server_credentials("127.0.0.1") is None
    with pytest.raises(SettingsError, match="refusing plaintext gRPC on 0.0.0.0"):
        GrpcTls.from_env({}).server_credentials("0.0.0.0")
    mesh = GrpcTls.from_env({"MEDLEDGER_GRPC_ALLOW_PLAINTEXT": "true"})
    assert mesh.server_credentials("0.0.0.0") is None


def test_a_certificate_turns_tls_on_anywhere(ca: ThrowawayCA) -> None:
    cert, key = ca.issue("server", server=True)
    tls = GrpcTls.from_env({"MEDLEDGER_GRPC_TLS_CERT_FILE": str(cert), "MEDLEDGER_GRPC_TLS_KEY_FILE": str(key)})
    assert tls.serves_tls
    assert tls.server_credentials("0.0.0.0") is not None
    assert tls.channel_credentials() is None  # calls stay plaintext until a CA to verify servers is given


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MEDLEDGER_GRPC_TLS_CERT_FILE": "CERT"}, "set both"),
        ({"MEDLEDGER_GRPC_TLS_CLIENT_CA_FILE": "CA"}, "needs a server certificate"),
        ({"MEDLEDGER_GRPC_ALLOW_PLAINTEXT": "yes"}, "true or false"),
        ({"MEDLEDGER_GRPC_TLS_CA_FILE": "/no/such/file.pem"}, "cannot be read"),
    ],
)
def test_contradicting_or_missing_settings_name_the_variable(
    ca: ThrowawayCA, env: dict[str, str], message: str
) -> None:
    resolved = {k: str(ca.ca_file) if v in ("CERT", "CA") else v for k, v in env.items()}
    with pytest.raises(SettingsError, match=message):
        GrpcTls.from_env(resolved)


def test_kafka_plaintext_by_default() -> None:
    assert kafka_security({}) == {"security_protocol": "PLAINTEXT"}


def test_kafka_sasl_ssl_with_scram_and_a_password_file(ca: ThrowawayCA, tmp_path: Path) -> None:
    secret = tmp_path / "kafka-password"
    secret.write_text("s3cret\n")
    options = kafka_security(
        {
            "MEDLEDGER_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
            "MEDLEDGER_KAFKA_SSL_CA_FILE": str(ca.ca_file),
            "MEDLEDGER_KAFKA_SASL_USERNAME": "ledger",
            "MEDLEDGER_KAFKA_SASL_PASSWORD_FILE": str(secret),
        }
    )
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("ledger", "s3cret")
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED


def test_kafka_mutual_tls_loads_the_client_certificate(ca: ThrowawayCA) -> None:
    cert, key = ca.issue("ledger", server=False)
    options = kafka_security(
        {
            "MEDLEDGER_KAFKA_SECURITY_PROTOCOL": "SSL",
            "MEDLEDGER_KAFKA_SSL_CA_FILE": str(ca.ca_file),
            "MEDLEDGER_KAFKA_SSL_CERT_FILE": str(cert),
            "MEDLEDGER_KAFKA_SSL_KEY_FILE": str(key),
        }
    )
    assert isinstance(options["ssl_context"], ssl.SSLContext) and "sasl_mechanism" not in options


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MEDLEDGER_KAFKA_SECURITY_PROTOCOL": "TLS"}, "MEDLEDGER_KAFKA_SECURITY_PROTOCOL"),
        ({"MEDLEDGER_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "MEDLEDGER_KAFKA_SASL_MECHANISM": "GSSAPI"}, "MECHANISM"),
        ({"MEDLEDGER_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "MEDLEDGER_KAFKA_SASL_PASSWORD": "x"}, "MEDLEDGER_KAFKA_SASL_USERNAME"),
    ],
)
def test_kafka_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        kafka_security(env)
