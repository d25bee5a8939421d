"""Connecting a hospital system to a MedLedger deployment.

A ``Connection`` holds one gRPC channel per service (TLS or mutual TLS from
the same ``MEDLEDGER_GRPC_TLS_*`` settings the services use, or given
explicitly); ``Connection.login`` gives a ``Client`` acting as one identity
over those channels, so a system acting for many practitioners shares them.
Everything is synchronous and thread-safe: gRPC channels and sessions may be
used from any number of threads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import TracebackType

import grpc

from medledger.client.consent import ConsentClient
from medledger.client.identity import IdentityClient
from medledger.client.ledger import LedgerClient
from medledger.client.records import RecordsClient
from medledger.client.session import Session, Signer
from medledger.runtime.settings import DEFAULT_PORTS
from medledger.runtime.transport import GrpcTls
from medledger.v1 import consent_pb2_grpc, identity_pb2_grpc, ledger_pb2_grpc, records_pb2_grpc

MAX_MESSAGE_BYTES = 80 * 1024 * 1024
"""Receive limit: an export may be a large FHIR Bundle (the service caps it)."""

ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
"""Every service runs as several replicas (k8s/base: two each). gRPC's default,
pick_first, would pin each channel to one of them for its whole life; round
robin spreads calls over every address the name resolves to (a headless
Service's pods, or ``ipv4:host:port,host:port``) and skips one that is down."""


@dataclass(frozen=True)
class Endpoints:
    """Where each service answers: host:port, or any gRPC target naming all
    its replicas (``dns:///records.medledger.svc:50053``,
    ``ipv4:10.0.0.5:50053,10.0.0.6:50053``); calls go round robin over them."""

    identity: str
    consent: str
    records: str
    ledger: str

    @classmethod
    def on_host(cls, host: str = "127.0.0.1") -> "Endpoints":
        """The default ports (identity 50051, consent 50052, records 50053, ledger 50054) on host."""
        return cls(**{name: f"{host}:{port}" for name, port in DEFAULT_PORTS.items()})


class Connection:
    """Channels to the four services; close it (or use ``with``) when done."""

    def __init__(self, endpoints: Endpoints, tls: GrpcTls | None = None) -> None:
        tls = tls if tls is not None else GrpcTls.from_env()
        credentials = tls.channel_credentials()
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.service_config", ROUND_ROBIN)]

        def open_channel(address: str) -> grpc.Channel:
            if credentials is None:
                return grpc.insecure_channel(address, options=options)
            return grpc.secure_channel(address, credentials, options=options)

        self.endpoints = endpoints
        self._channels = {
            name: open_channel(getattr(endpoints, name)) for name in ("identity", "consent", "records", "ledger")
        }
        self.identity_stub = identity_pb2_grpc.IdentityServiceStub(self._channels["identity"])
        self.consent_stub = consent_pb2_grpc.ConsentServiceStub(self._channels["consent"])
        self.records_stub = records_pb2_grpc.RecordsServiceStub(self._channels["records"])
        self.ledger = LedgerClient(ledger_pb2_grpc.LedgerServiceStub(self._channels["ledger"]))

    def login(self, identity_id: str, key: Signer) -> "Client":
        """A client acting as identity_id, authenticated by key (its current
        Ed25519 key); tokens are obtained on first use and renewed."""
        return Client(self, Session(self.identity_stub, identity_id, key))

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class Client:
    """One identity's view of MedLedger: ``identity``, ``consent``,
    ``records`` and ``ledger``, all over the connection's channels."""

    def __init__(self, connection: Connection, session: Session) -> None:
        self.session = session
        self.identity = IdentityClient(session, connection.identity_stub)
        self.consent = ConsentClient(session, connection.consent_stub)
        self.records = RecordsClient(session, connection.records_stub, self.identity)
        self.ledger = connection.ledger

    @property
    def identity_id(self) -> str:
        return self.session.identity_id
