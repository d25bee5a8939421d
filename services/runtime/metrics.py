"""Prometheus metrics, written once for every service (README.md, Operations:
metrics and alerts; docs/architecture.md, Decisions).

One registry (prometheus_client's default, which also carries the process's
CPU, memory and garbage-collector metrics), one plain-HTTP ``/metrics``
endpoint per process (``MEDLEDGER_<SERVICE>_METRICS_PORT``), the gRPC server
interceptor every service installs through ``GrpcServer``, and the runtime's
shared instruments: Kafka consumer lag, outbox backlog, PostgreSQL pool use
and which process leads which single-writer work. Service-specific metrics
live beside their service (``ledger/metrics.py``, ``consent/metrics.py``) so a
process exports only what it can measure.

**No label ever carries a per-person value.** Label values come only from
fixed sets the code names (rpc and service names as registered, status codes,
enum names, reject kinds, the names of readers and of leader work, topic
names): never an identity, patient, consent, record or event id, and never a
value a caller chose (an unregistered method is counted as ``unknown``). That
bounds the number of series, and the endpoint discloses nothing about anyone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator
from wsgiref.simple_server import WSGIServer

import asyncpg
import grpc
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Info, start_http_server

log = logging.getLogger(__name__)

# Benchmarks only (deploy/bench_*.py set it to measure the interceptor's cost;
# docs/benchmarks.md). Never set in a deployment: the gRPC metrics are how an
# operator sees errors and latency.
BENCHMARK_WITHOUT_GRPC_METRICS = "MEDLEDGER_BENCHMARK_WITHOUT_GRPC_METRICS"

# Latency buckets from 0.25 ms (a CheckAccess answers in about 1 ms) to 10 s.
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNKNOWN = "unknown"
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}  # should a context report an int

SERVICE = Info("medledger_service", "Which MedLedger service this process runs.")
GRPC_HANDLED = Counter(
    "grpc_server_handled", "RPCs completed on the server, by method and status code.",
    ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
)
GRPC_SECONDS = Histogram(
    "grpc_server_handling_seconds", "Time from the handler's start to the RPC's completion.",
    ["grpc_service", "grpc_method", "grpc_type"], buckets=LATENCY_BUCKETS,
)
CONSUMER_LAG = Gauge(
    "medledger_kafka_consumer_lag_records",
    "Records on a partition that this reader has not fetched yet (log end minus its position).",
    ["reader", "topic", "partition"],
)
OUTBOX_UNPUBLISHED = Gauge(
    "medledger_outbox_unpublished_events", "Committed events the outbox relay has not put on Kafka yet.", ["topic"]
)
OUTBOX_OLDEST = Gauge(
    "medledger_outbox_oldest_unpublished_age_seconds",
    "Age of the oldest committed event not yet on Kafka (0 when none waits).", ["topic"],
)
OUTBOX_PUBLISHED = Counter("medledger_outbox_published_events", "Events the outbox relay put on Kafka.", ["topic"])
POOL_CONNECTIONS = Gauge(
    "medledger_postgres_pool_connections", "Connections of the service's PostgreSQL pool, by state.", ["state"]
)
POOL_MAX = Gauge("medledger_postgres_pool_max_connections", "The PostgreSQL pool's size limit.")
SERVING = Gauge("medledger_serving", "1 while the process reports SERVING on grpc.health.v1.Health, else 0.")
LEADER = Gauge(
    "medledger_leader",
    "1 while this process holds the advisory lock of a single-writer work (the ledger's sequencer, an "
    "outbox relay, consent housekeeping), 0 while it stands by.",
    ["work"],
)


# ---- the /metrics endpoint ---------------------------------------------------------------------


@dataclass
class MetricsEndpoint:
    """The running HTTP server; ``port`` is the one it bound."""

    server: WSGIServer
    port: int

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve(service: str, host: str, port: int) -> MetricsEndpoint | None:
    """Serve ``/metrics`` on host:port from a daemon thread; None when port is
    0 (turned off). A port in use stops the process, as the gRPC port does: a
    replica that cannot be scraped must not look healthy."""
    SERVICE.info({"service": service})
    if port == 0:
        log.info("metrics endpoint turned off (metrics port 0)")
        return None
    try:
        server, _thread = start_http_server(port, host)
    except OSError as exc:
        raise OSError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from exc
    bound = int(server.server_address[1])
    log.info("metrics listening", extra={"address": f"http://{host}:{bound}/metrics"})
    return MetricsEndpoint(server, bound)


# ---- gRPC ----------------------------------------------------------------------------------------


def grpc_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The interceptors GrpcServer installs outermost, so they see every status
    (authentication failures included)."""
    if os.environ.get(BENCHMARK_WITHOUT_GRPC_METRICS) == "1":
        log.warning("gRPC metrics turned off for a benchmark (%s=1)", BENCHMARK_WITHOUT_GRPC_METRICS)
        return []
    return [MetricsInterceptor()]


def _split(method: str) -> tuple[str, str]:
    """'/medledger.v1.LedgerService/GetCheckpoint' -> ('medledger.v1.LedgerService', 'GetCheckpoint')."""
    service, _, name = method.lstrip("/").rpartition("/")
    return (service, name) if service and name else (UNKNOWN, UNKNOWN)


def _kind(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming:
        return "bidi_stream" if handler.response_streaming else "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


class _Rpc:
    """The instruments of one registered method, looked up once."""

    def __init__(self, method: str, kind: str) -> None:
        self.service, self.name = _split(method)
        self.kind = kind
        self.seconds = GRPC_SECONDS.labels(self.service, self.name, kind)
        self._handled: dict[str, Any] = {}

    def done(self, code: str, started: float) -> None:
        self.seconds.observe(time.perf_counter() - started)
        counter = self._handled.get(code)
        if counter is None:
            counter = self._handled[code] = GRPC_HANDLED.labels(self.service, self.name, self.kind, code)
        counter.inc()


def _code(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    """The status the call ends with: the one set or aborted with, else OK,
    UNKNOWN for an escaped exception (grpc's own answer), CANCELLED when the
    client went away."""
    if error is not None and not isinstance(error, grpc.aio.AbortError):
        return "CANCELLED" if isinstance(error, (asyncio.CancelledError, GeneratorExit)) else "UNKNOWN"
    code = context.code()
    if code is None:
        return "OK"
    return code.name if isinstance(code, grpc.StatusCode) else _CODE_NAMES.get(code, "UNKNOWN")


@contextmanager
def _counted(rpc: _Rpc, context: grpc.aio.ServicerContext) -> Iterator[None]:
    """Times the block and counts it under the status the call ends with."""
    started = time.perf_counter()
    error: BaseException | None = None
    try:
        yield
    except BaseException as exc:
        error = exc
        raise
    finally:
        rpc.done(_code(context, error), started)


def _observed(handler: grpc.RpcMethodHandler, rpc: _Rpc) -> grpc.RpcMethodHandler:
    """The same handler, timed and counted by its final status code."""
    if handler.unary_unary or handler.stream_unary:
        inner = handler.unary_unary or handler.stream_unary

        async def unary_reply(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with _counted(rpc, context):
                return await inner(request, context)

        make = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
        return make(unary_reply, handler.request_deserializer, handler.response_serializer)

    inner_stream = handler.unary_stream or handler.stream_stream

    async def streamed_reply(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        with _counted(rpc, context):
            async for item in inner_stream(request, context):
                yield item

    make_stream = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
    return make_stream(streamed_reply, handler.request_deserializer, handler.response_serializer)


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every call by service, method, type and status code and times it
    (grpc_server_handled_total, grpc_server_handling_seconds). A method the
    server does not have is counted as ``unknown``/``unknown`` UNIMPLEMENTED,
    never under the name the caller sent."""

    def __init__(self) -> None:
        self._rpcs: dict[tuple[str, str], _Rpc] = {}
        self._unimplemented = GRPC_HANDLED.labels(UNKNOWN, UNKNOWN, UNKNOWN, "UNIMPLEMENTED")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            self._unimplemented.inc()
            return handler
        kind = _kind(handler)
        rpc = self._rpcs.get((details.method, kind))
        if rpc is None:
            rpc = self._rpcs[(details.method, kind)] = _Rpc(details.method, kind)
        return _observed(handler, rpc)


# ---- Kafka, outbox, PostgreSQL, leadership ---------------------------------------------------------


class ConsumerLag:
    """Per topic-partition lag of one named reader (its name, not who reads)."""

    def __init__(self, reader: str) -> None:
        self.reader = reader
        self._gauges: dict[tuple[str, int], Any] = {}

    def observe(self, topic: str, partition: int, log_end: int, position: int) -> None:
        gauge = self._gauges.get((topic, partition))
        if gauge is None:
            gauge = self._gauges[(topic, partition)] = CONSUMER_LAG.labels(self.reader, topic, str(partition))
        gauge.set(max(0, log_end - position))

    def forget(self) -> None:
        """Drop this reader's series (a stopped reader has no lag)."""
        for topic, partition in self._gauges:
            try:
                CONSUMER_LAG.remove(self.reader, topic, str(partition))
            except KeyError:
                pass
        self._gauges.clear()


class Every:
    """Rate limit for measurements that cost a query: ``due()`` is true at
    most once per ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._next = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.seconds
        return True


class OutboxBacklog:
    """Unpublished rows of one outbox, measured by its active relay."""

    def __init__(self, topic: str, every_s: float = 1.0, table: str = "outbox") -> None:
        self.table = table
        self.unpublished = OUTBOX_UNPUBLISHED.labels(topic)
        self.oldest = OUTBOX_OLDEST.labels(topic)
        self.published = OUTBOX_PUBLISHED.labels(topic)
        self.every = Every(every_s)

    async def measure(self, conn: Any) -> None:
        """At most once per ``every_s``; the partial index on unpublished rows
        keeps it cheap however long the outbox grows."""
        if not self.every.due():
            return
        row = await conn.fetchrow(
            "SELECT count(*) AS n, coalesce(extract(epoch FROM now() - min(created_at)), 0) AS age"
            f" FROM {self.table} WHERE published_at IS NULL"
        )
        self.unpublished.set(row["n"])
        self.oldest.set(float(row["age"]))


def watch_pool(pool: asyncpg.Pool) -> None:
    """Connections in use and idle, read when scraped."""
    POOL_MAX.set(pool.get_max_size())
    POOL_CONNECTIONS.labels("in_use").set_function(lambda: pool.get_size() - pool.get_idle_size())
    POOL_CONNECTIONS.labels("idle").set_function(pool.get_idle_size)


def track_leadership(work: str, is_leader: Callable[[], bool]) -> None:
    """medledger_leader{work} follows ``is_leader()``, read when scraped."""
    LEADER.labels(work).set_function(lambda: 1.0 if is_leader() else 0.0)
