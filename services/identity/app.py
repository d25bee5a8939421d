"""Wires the identity service into the shared host: its gRPC servicer, migrations
and background work. Its RPCs grow in the identity issue."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import grpc

from medledger.runtime.grpc_server import Registration, full_service_name
from medledger.runtime.host import ServiceContext
from medledger.v1 import identity_pb2, identity_pb2_grpc


class IdentityApp:
    name = "identity"
    service_names = [full_service_name(identity_pb2, "IdentityService")]
    migrations = Path(__file__).parent / "migrations"

    def __init__(self) -> None:
        self.ctx: ServiceContext | None = None

    def registrations(self) -> Sequence[Registration]:
        def register(server: grpc.aio.Server) -> None:
            identity_pb2_grpc.add_IdentityServiceServicer_to_server(identity_pb2_grpc.IdentityServiceServicer(), server)

        return [register]

    def interceptors(self) -> Sequence[grpc.aio.ServerInterceptor]:
        return []

    async def on_ready(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def on_stop(self) -> None:
        self.ctx = None

    def ready(self) -> bool:
        return self.ctx is not None
