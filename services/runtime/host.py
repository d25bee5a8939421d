"""Process lifecycle shared by every service.

Start order: the gRPC server comes up first and answers NOT_SERVING; PostgreSQL
(with migrations) and the Kafka producer are then connected with exponential
backoff; the service's own tasks start; a monitor keeps the health status in
step with the dependencies. When Kafka or PostgreSQL goes away the process
keeps running, reports NOT_SERVING and recovers by itself when they return.
SIGTERM and SIGINT shut down gracefully.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import asyncpg
import grpc
from aiokafka import AIOKafkaProducer

from medledger.runtime.errors import DependencyUnavailable
from medledger.runtime.grpc_server import GrpcServer, Registration
from medledger.runtime import metrics
from medledger.runtime.kafka import kafka_reachable, make_producer, start_producer
from medledger.runtime.postgres import create_pool, postgres_reachable, prepare_database
from medledger.runtime.retry import with_backoff
from medledger.runtime.settings import CommonSettings

log = logging.getLogger(__name__)

# How often health is probed while the service is not serving (see ServiceHost._monitor).
UNREADY_PROBE_INTERVAL_S = 0.1


@dataclass
class ServiceContext:
    """The live dependencies a service's code works with once connected."""

    settings: CommonSettings
    pool: asyncpg.Pool
    producer: AIOKafkaProducer


class ServiceApp(Protocol):
    """What a service plugs into the host."""

    name: str
    service_names: Sequence[str]
    migrations: Path

    def registrations(self) -> Sequence[Registration]: ...

    def interceptors(self) -> Sequence[grpc.aio.ServerInterceptor]:
        """Server interceptors, e.g. the AuthInterceptor; may be empty."""

    async def on_ready(self, ctx: ServiceContext) -> None:
        """Dependencies are connected: start background work. Must return promptly."""

    async def on_stop(self) -> None:
        """Stop background work; called before the dependencies close."""

    def ready(self) -> bool:
        """Service-specific readiness on top of Kafka and PostgreSQL being reachable."""


class ServiceHost:
    def __init__(
        self,
        app: ServiceApp,
        settings: CommonSettings,
        credentials: grpc.ServerCredentials | None = None,
        monitor_interval: float = 1.0,
    ) -> None:
        """credentials: TLS for the gRPC port (None: plaintext, see runtime.transport)."""
        self.app = app
        self.settings = settings
        self.monitor_interval = monitor_interval
        self.credentials = credentials
        self.grpc: GrpcServer | None = None
        self.stop_event = asyncio.Event()
        self.serving = False

    async def _connect(self) -> ServiceContext | None:
        url = self.settings.database_url

        async def database() -> asyncpg.Pool:
            await prepare_database(url, self.app.migrations)
            return await create_pool(url)

        pool = await with_backoff("postgresql", database, self.stop_event)
        if pool is None:
            return None
        metrics.watch_pool(pool)

        async def producer() -> AIOKafkaProducer:
            # optional: the service's own producer settings (consent lingers for its decisions)
            p = make_producer(self.settings.kafka_bootstrap, **getattr(self.app, "producer_options", {}))
            await start_producer(p)
            return p

        kafka = await with_backoff("kafka", producer, self.stop_event)
        if kafka is None:
            await pool.close()
            return None
        return ServiceContext(self.settings, pool, kafka)

    async def _monitor(self, ctx: ServiceContext) -> None:
        while not self.stop_event.is_set():
            pg_ok, kafka_ok = await asyncio.gather(
                postgres_reachable(ctx.pool), kafka_reachable(self.settings.kafka_bootstrap)
            )
            serving = pg_ok and kafka_ok and self.app.ready()
            if serving != self.serving:
                log.info(
                    "health changed",
                    extra={"serving": serving, "postgres": pg_ok, "kafka": kafka_ok, "app": self.app.ready()},
                )
                self.serving = serving
                assert self.grpc is not None
                await self.grpc.set_serving(serving)
            # Not serving yet (starting, or a dependency was lost): look again
            # soon, so readiness is reported within a tenth of a second of being
            # true, not up to a whole interval later. A refused connection
            # answers at once, so the faster probe costs next to nothing.
            interval = self.monitor_interval if serving else min(self.monitor_interval, UNREADY_PROBE_INTERVAL_S)
            try:
                await asyncio.wait_for(self.stop_event.wait(), interval)
            except asyncio.TimeoutError:
                pass

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT (or stop_event) and then shut down cleanly."""
        stop_on_signals(self.stop_event)
        endpoint = metrics.serve(self.app.name, self.settings.grpc_host, self.settings.metrics_port)
        metrics.SERVING.set_function(lambda: 1.0 if self.serving else 0.0)
        try:
            await self._serve()
        finally:
            if endpoint is not None:
                endpoint.stop()

    async def _serve(self) -> None:
        # grpc.aio binds the server to the running loop: build it here, not in __init__.
        grpc_server = self.grpc = GrpcServer(
            self.settings.grpc_host,
            self.settings.grpc_port,
            self.app.service_names,
            self.app.registrations(),
            self.app.interceptors(),
            self.credentials,
            getattr(self.app, "grpc_options", ()),  # optional: message size limits of the service's own
        )
        await grpc_server.start()
        ctx = await self._connect()
        if ctx is None:
            await grpc_server.stop()
            return
        monitor: asyncio.Task[None] | None = None
        try:
            await self.app.on_ready(ctx)
            # Everything alive now (modules, schemas, settings) lives as long as
            # the process: out of the collector's sight, a full collection on
            # the request path walks only what requests and events created.
            gc.freeze()
            monitor = asyncio.create_task(self._monitor(ctx))
            await self.stop_event.wait()
        finally:
            log.info("shutting down")
            await grpc_server.set_serving(False)
            if monitor:
                monitor.cancel()
                await asyncio.gather(monitor, return_exceptions=True)
            await self.app.on_stop()
            await grpc_server.stop()
            await ctx.producer.stop()
            await ctx.pool.close()


def stop_on_signals(stop_event: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop_event``: the process shuts down gracefully."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop_event.set)
        except (NotImplementedError, RuntimeError):
            pass  # not the main thread (tests): the caller sets stop_event


def require_context(ctx: ServiceContext | None) -> ServiceContext:
    """For handlers: UNAVAILABLE until the dependencies are connected."""
    if ctx is None:
        raise DependencyUnavailable("service is starting: dependencies not connected yet")
    return ctx
