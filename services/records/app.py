"""Wires the records service into the shared host: its gRPC servicer, migrations
and background work. Its RPCs grow in the records issue."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import grpc

from medledger.runtime.grpc_server import Registration, full_service_name
from medledger.runtime.host import ServiceContext
from medledger.v1 import records_pb2, records_pb2_grpc


class RecordsApp:
    name = "records"
    service_names = [full_service_name(records_pb2, "RecordsService")]
    migrations = Path(__file__).parent / "migrations"

    def __init__(self) -> None:
        self.ctx: ServiceContext | None = None

    def registrations(self) -> Sequence[Registration]:
        def register(server: grpc.aio.Server) -> None:
            records_pb2_grpc.add_RecordsServiceServicer_to_server(records_pb2_grpc.RecordsServiceServicer(), server)

        return [register]

    def interceptors(self) -> Sequence[grpc.aio.ServerInterceptor]:
        return []

    async def on_ready(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    async def on_stop(self) -> None:
        self.ctx = None

    def ready(self) -> bool:
        return self.ctx is not None
