"""Transport security settings (docs/architecture.md, Security model): TLS or mutual TLS
for gRPC, TLS and SASL for Kafka. PostgreSQL TLS is part of each database URL
(``?sslmode=verify-full&sslrootcert=...``), which asyncpg understands.

Local development may run in plaintext, but only on loopback: a gRPC server
asked to listen elsewhere without TLS refuses to start, unless the operator
says plaintext is intended (``MEDLEDGER_GRPC_ALLOW_PLAINTEXT=true``, e.g. a
service mesh that terminates mutual TLS beside every pod).
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generic, Mapping, TypeVar

import grpc

from medledger.runtime.errors import SettingsError
from medledger.runtime.settings import env_str


def _read(path: str, variable: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SettingsError(f"{variable}={path} cannot be read ({exc.strerror})") from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class GrpcTls:
    """PEM material for gRPC. The same certificate serves this process's server
    and identifies it as a client under mutual TLS."""

    cert_chain: bytes | None = None
    private_key: bytes | None = None
    client_ca: bytes | None = None  # set: the server requires client certificates signed by it
    server_ca: bytes | None = None  # set: this process verifies the servers it calls against it
    allow_plaintext: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "GrpcTls":
        def pem(variable: str) -> bytes | None:
            path = env_str(variable, "", env)
            return _read(path, variable) if path else None

        cert = pem("MEDLEDGER_GRPC_TLS_CERT_FILE")
        key = pem("MEDLEDGER_GRPC_TLS_KEY_FILE")
        if (cert is None) != (key is None):
            raise SettingsError("set both MEDLEDGER_GRPC_TLS_CERT_FILE and MEDLEDGER_GRPC_TLS_KEY_FILE, or neither")
        allow = env_str("MEDLEDGER_GRPC_ALLOW_PLAINTEXT", "false", env).lower()
        if allow not in ("true", "false"):
            raise SettingsError(f"MEDLEDGER_GRPC_ALLOW_PLAINTEXT must be true or false, got {allow!r}")
        client_ca = pem("MEDLEDGER_GRPC_TLS_CLIENT_CA_FILE")
        if client_ca is not None and cert is None:
            raise SettingsError("MEDLEDGER_GRPC_TLS_CLIENT_CA_FILE (mutual TLS) needs a server certificate too")
        return cls(cert, key, client_ca, pem("MEDLEDGER_GRPC_TLS_CA_FILE"), allow == "true")

    @property
    def serves_tls(self) -> bool:
        return self.cert_chain is not None

    def server_credentials(self, host: str) -> grpc.ServerCredentials | None:
        """Credentials for a server listening on host; None means plaintext,
        which is allowed on loopback or when explicitly intended."""
        if self.cert_chain is None or self.private_key is None:
            if not is_loopback(host) and not self.allow_plaintext:
                raise SettingsError(
                    f"refusing plaintext gRPC on {host}: set MEDLEDGER_GRPC_TLS_CERT_FILE and "
                    "MEDLEDGER_GRPC_TLS_KEY_FILE, or MEDLEDGER_GRPC_ALLOW_PLAINTEXT=true when a "
                    "service mesh provides mutual TLS"
                )
            return None
        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """Credentials for calling other services; None means plaintext."""
        if self.server_ca is None:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.server_ca, private_key=self.private_key, certificate_chain=self.cert_chain
        )

    def aio_channel(self, address: str) -> grpc.aio.Channel:
        creds = self.channel_credentials()
        return grpc.aio.secure_channel(address, creds) if creds else grpc.aio.insecure_channel(address)

    def channel(self, address: str) -> grpc.Channel:
        creds = self.channel_credentials()
        return grpc.secure_channel(address, creds) if creds else grpc.insecure_channel(address)


def kafka_security(env: Mapping[str, str] | None = None) -> dict[str, object]:
    """aiokafka client options for TLS and SASL, from MEDLEDGER_KAFKA_* settings
    (PLAINTEXT by default, for the local broker on loopback)."""
    protocol = env_str("MEDLEDGER_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", env).upper()
    if protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
        raise SettingsError(
            f"MEDLEDGER_KAFKA_SECURITY_PROTOCOL must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL, got {protocol!r}"
        )
    options: dict[str, object] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        ca = env_str("MEDLEDGER_KAFKA_SSL_CA_FILE", "", env)
        context = ssl.create_default_context(cafile=ca or None)
        cert = env_str("MEDLEDGER_KAFKA_SSL_CERT_FILE", "", env)
        if cert:
            context.load_cert_chain(cert, env_str("MEDLEDGER_KAFKA_SSL_KEY_FILE", env=env))
        options["ssl_context"] = context
    if protocol.startswith("SASL_"):
        mechanism = env_str("MEDLEDGER_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512", env).upper()
        if mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            raise SettingsError(f"MEDLEDGER_KAFKA_SASL_MECHANISM {mechanism!r} is not PLAIN or SCRAM-SHA-256/512")
        password_file = env_str("MEDLEDGER_KAFKA_SASL_PASSWORD_FILE", "", env)
        password = (
            _read(password_file, "MEDLEDGER_KAFKA_SASL_PASSWORD_FILE").decode().strip()
            if password_file
            else env_str("MEDLEDGER_KAFKA_SASL_PASSWORD", env=env)
        )
        options.update(
            sasl_mechanism=mechanism,
            sasl_plain_username=env_str("MEDLEDGER_KAFKA_SASL_USERNAME", env=env),
            sasl_plain_password=password,
        )
    return options


Stub = TypeVar("Stub")


class LazyStub(Generic[Stub]):
    """A grpc.aio channel to ``address`` and one stub on it, both made on first
    use: inside the running event loop (grpc.aio binds a channel to the loop
    that created it), with the settings' TLS. One stub, kept: building one
    makes a callable per rpc of the service, about 1% of records' CPU per
    read when it was done per call."""

    def __init__(self, address: str, make: Callable[[grpc.aio.Channel], Stub]) -> None:
        self.address = address
        self._make = make
        self._channel: grpc.aio.Channel | None = None
        self._stub: Stub | None = None

    def stub(self) -> Stub:
        if self._stub is None:
            self._channel = GrpcTls.from_env().aio_channel(self.address)
            self._stub = self._make(self._channel)
        return self._stub

    async def close(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()
