"""A whole MedLedger network for tests that cross every service: identity,
consent, records and ledger as real processes on the real Kafka and
PostgreSQL, one party of each role the README's authorization matrix names,
and which process serves which gRPC service (asked by server reflection, so a
service added later is found without changing this file).

    network = start_network(identity_service, spawn, service_env, tmp_path)
    stub = network.stub(ledger_pb2_grpc.LedgerServiceStub, "medledger.v1.LedgerService")
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

import medledger.v1
from medledger.testing.consent import consent_env
from medledger.testing.identity import IdentityHarness, Party
from medledger.testing.records import records_env
from medledger.testing.stack import ServiceProcess, all_serving

# The columns of the README's authorization matrix, as ``Caller.role`` names them.
ROLES = ("PATIENT", "PRACTITIONER", "ORGANIZATION", "NETWORK_AUDITOR", "ORGANIZATION_AUDITOR", "SERVICE")
PROCESSES = ("consent", "ledger", "records")  # besides identity, which the fixture starts

S = TypeVar("S")


def medledger_services() -> list[ServiceDescriptor]:
    """Every gRPC service the protos declare (package medledger.v1)."""
    found: dict[str, ServiceDescriptor] = {}
    for module_info in pkgutil.iter_modules(medledger.v1.__path__):
        if module_info.name.endswith("_pb2"):
            module = importlib.import_module(f"medledger.v1.{module_info.name}")
            for service in module.DESCRIPTOR.services_by_name.values():
                found[service.full_name] = service
    return [found[name] for name in sorted(found)]


def medledger_methods() -> list[MethodDescriptor]:
    return [method for service in medledger_services() for method in service.methods]


@dataclass
class Network:
    identity: IdentityHarness
    processes: dict[str, ServiceProcess]
    parties: dict[str, Party]
    # gRPC service full name -> address of the process serving it
    serving: dict[str, str] = field(default_factory=dict)
    _channels: dict[str, grpc.Channel] = field(default_factory=dict)

    def channel(self, service: str) -> grpc.Channel:
        address = self.serving.get(service)
        if address is None:
            raise AssertionError(f"no process of this network serves {service}; start it in start_network")
        if address not in self._channels:
            self._channels[address] = grpc.insecure_channel(address)
        return self._channels[address]

    def stub(self, stub_class: Callable[[grpc.Channel], S], service: str) -> S:
        return stub_class(self.channel(service))

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()


def served_services(address: str) -> list[str]:
    with grpc.insecure_channel(address) as channel:
        return list(ProtoReflectionDescriptorDatabase(channel).get_services())


def start_network(
    identity: IdentityHarness, spawn: Callable[..., ServiceProcess], service_env: dict[str, str], tmp_path: Path
) -> Network:
    consent = spawn("consent", **consent_env(identity, tmp_path))
    ledger = spawn("ledger")
    records = spawn("records", **records_env(identity, tmp_path, service_env))
    all_serving(consent, ledger, records)
    processes = {"consent": consent, "ledger": ledger, "records": records}
    hospital = identity.organization()
    parties = {
        "ORGANIZATION": hospital,
        "PATIENT": identity.patient(hospital),
        "PRACTITIONER": identity.practitioner(hospital),
        "NETWORK_AUDITOR": identity.auditor(),
        "ORGANIZATION_AUDITOR": identity.organization_auditor(hospital),
        "SERVICE": identity.service(),
    }
    serving = {name: identity.address for name in served_services(identity.address)}
    for process in processes.values():
        serving.update({name: process.address for name in served_services(process.address)})
    return Network(identity, processes, parties, serving)


def call_raw(
    network: Network, method: MethodDescriptor, payload: bytes, metadata: tuple[tuple[str, str], ...] = (),
    timeout: float = 30,
) -> tuple[grpc.StatusCode, str]:
    """(status, details) of one call of method with these request bytes (not
    necessarily a valid message); a stream is read for its first message only
    (WatchCheckpoints never ends by itself)."""
    channel = network.channel(method.containing_service.full_name)
    path = f"/{method.containing_service.full_name}/{method.name}"
    raw: Callable[[bytes], bytes] = lambda data: data  # noqa: E731 - bytes in, bytes out
    try:
        if method.server_streaming:
            stream = channel.unary_stream(path, request_serializer=raw, response_deserializer=raw)(
                payload, metadata=metadata, timeout=timeout
            )
            try:
                next(stream, None)
            finally:
                stream.cancel()
        else:
            channel.unary_unary(path, request_serializer=raw, response_deserializer=raw)(
                payload, metadata=metadata, timeout=timeout
            )
    except grpc.RpcError as exc:
        return exc.code(), str(exc.details())
    return grpc.StatusCode.OK, ""


@pytest.fixture
def network(
    identity_service: IdentityHarness, spawn: Callable[..., ServiceProcess], service_env: dict[str, str], tmp_path: Path
) -> Iterator[Network]:
    """The whole network for one test (import this fixture into the test module)."""
    started = start_network(identity_service, spawn, service_env, tmp_path)
    yield started
    started.close()


def all_processes(network: Network) -> Iterator[ServiceProcess]:
    if network.identity.process is not None:
        yield network.identity.process
    yield from network.processes.values()
