"""The gRPC metrics interceptor, as GrpcServer installs it, and the /metrics
endpoint: every call is counted under its registered method with the status
the caller got (authentication failures and escaped exceptions included), a
method the server lacks never becomes a label, and the endpoint serves what
prometheus-client's parser reads. An in-process server on loopback; no Kafka
or PostgreSQL."""

from __future__ import annotations

import urllib.request
from typing import Any, AsyncIterator, Callable, Iterator

import grpc
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from medledger.runtime import metrics
from medledger.runtime.errors import InvalidArgument, Unauthenticated
from medledger.runtime.grpc_server import GrpcServer, wrap_handler
from medledger.testing.stack import free_port, until

SERVICE = "test.v1.Probe"


async def ok(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def refuse(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise InvalidArgument("patient_id is required")


async def crash(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise RuntimeError("a bug")


async def count_to(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for i in range(int(request or b"0")):
        yield str(i).encode()


def register(server: grpc.aio.Server) -> None:
    handlers = {
        "Ok": grpc.unary_unary_rpc_method_handler(ok),
        "Refuse": grpc.unary_unary_rpc_method_handler(refuse),
        "Crash": grpc.unary_unary_rpc_method_handler(crash),
        "Guarded": grpc.unary_unary_rpc_method_handler(ok),
        "CountTo": grpc.unary_stream_rpc_method_handler(count_to),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


def handled(method: str, code: str, kind: str = "unary", service: str = SERVICE) -> float:
    labels = {"grpc_service": service, "grpc_method": method, "grpc_type": kind, "grpc_code": code}
    return REGISTRY.get_sample_value("grpc_server_handled_total", labels) or 0.0


def timed(method: str, kind: str = "unary") -> float:
    labels = {"grpc_service": SERVICE, "grpc_method": method, "grpc_type": kind}
    return REGISTRY.get_sample_value("grpc_server_handling_seconds_count", labels) or 0.0


class RefuseWithoutToken(grpc.aio.ServerInterceptor):
    """Refuses /Guarded before its handler runs, as the AuthInterceptor refuses
    a caller without a token (through the same wrap_handler)."""

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if details.method != f"/{SERVICE}/Guarded":
            return handler

        async def authenticate(request: Any, context: grpc.aio.ServicerContext) -> None:
            raise Unauthenticated("needs a bearer token")

        return wrap_handler(handler, authenticate)


@pytest.fixture
async def server() -> AsyncIterator[str]:
    grpc_server = GrpcServer("127.0.0.1", free_port(), [SERVICE], [register], [RefuseWithoutToken()])
    await grpc_server.start()
    yield f"127.0.0.1:{grpc_server.port}"
    await grpc_server.stop(0)


async def call(address: str, method: str, request: bytes = b"x") -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            await channel.unary_unary(method)(request)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def counted(condition: Callable[[], bool]) -> None:
    await until(condition, "the call was never counted as expected", timeout=5, interval=0.01)


async def test_calls_are_counted_and_timed_by_method_and_status(server: str) -> None:
    before = {m: (handled(m, c), timed(m)) for m, c in
              (("Ok", "OK"), ("Refuse", "INVALID_ARGUMENT"), ("Crash", "UNKNOWN"), ("Guarded", "UNAUTHENTICATED"))}
    assert await call(server, f"/{SERVICE}/Ok") == grpc.StatusCode.OK
    assert await call(server, f"/{SERVICE}/Ok") == grpc.StatusCode.OK
    assert await call(server, f"/{SERVICE}/Refuse") == grpc.StatusCode.INVALID_ARGUMENT
    assert await call(server, f"/{SERVICE}/Crash") == grpc.StatusCode.UNKNOWN
    # Refused by an inner interceptor before the handler runs: still this method's call.
    assert await call(server, f"/{SERVICE}/Guarded") == grpc.StatusCode.UNAUTHENTICATED
    # grpc's abort sends the status before the handler's exception unwinds
    # through the interceptor, so a refused call may be counted a moment after
    # its caller has the answer.
    await counted(lambda: handled("Ok", "OK") == before["Ok"][0] + 2 and timed("Ok") == before["Ok"][1] + 2)
    await counted(lambda: handled("Refuse", "INVALID_ARGUMENT") == before["Refuse"][0] + 1)
    assert handled("Refuse", "OK") == 0
    await counted(lambda: handled("Crash", "UNKNOWN") == before["Crash"][0] + 1)
    await counted(lambda: handled("Guarded", "UNAUTHENTICATED") == before["Guarded"][0] + 1)
    assert handled("Guarded", "OK") == 0


async def test_streams_are_counted_once_when_they_end(server: str) -> None:
    before = handled("CountTo", "OK", "server_stream")
    async with grpc.aio.insecure_channel(server) as channel:
        replies = [r async for r in channel.unary_stream(f"/{SERVICE}/CountTo")(b"3")]
    assert replies == [b"0", b"1", b"2"]
    assert handled("CountTo", "OK", "server_stream") == before + 1
    assert timed("CountTo", "server_stream") >= 1


async def test_health_checks_are_counted_under_their_service(server: str) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    before = handled("Check", "OK", service="grpc.health.v1.Health")
    async with grpc.aio.insecure_channel(server) as channel:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert handled("Check", "OK", service="grpc.health.v1.Health") == before + 1


async def test_a_method_the_server_lacks_never_becomes_a_label(server: str) -> None:
    """A caller chooses the method path; counting it by name would let anyone
    create series without bound, or put an id into the metrics."""
    before = handled(metrics.UNKNOWN, "UNIMPLEMENTED", metrics.UNKNOWN, metrics.UNKNOWN)
    probe = "patient-0e0c2b9c-7d1f-4a8e-9d54-2f1d3c4b5a69"
    assert await call(server, f"/{SERVICE}/{probe}") == grpc.StatusCode.UNIMPLEMENTED
    assert await call(server, f"/{probe}.Service/Get") == grpc.StatusCode.UNIMPLEMENTED
    assert handled(metrics.UNKNOWN, "UNIMPLEMENTED", metrics.UNKNOWN, metrics.UNKNOWN) == before + 2
    values = {v for family in REGISTRY.collect() for s in family.samples for v in s.labels.values()}
    assert not any(probe in v for v in values)


def test_the_benchmark_switch_removes_only_the_interceptor(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [type(i) for i in metrics.grpc_interceptors()] == [metrics.MetricsInterceptor]
    monkeypatch.setenv(metrics.BENCHMARK_WITHOUT_GRPC_METRICS, "1")
    assert metrics.grpc_interceptors() == []


@pytest.fixture
def endpoint() -> Iterator[metrics.MetricsEndpoint]:
    served = metrics.serve("probe", "127.0.0.1", free_port())
    assert served is not None
    yield served
    served.stop()


def scrape(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


async def test_the_endpoint_serves_what_the_parser_reads(server: str, endpoint: metrics.MetricsEndpoint) -> None:
    await call(server, f"/{SERVICE}/Ok")
    families = scrape(endpoint.port)
    (info,) = families["medledger_service_info"].samples
    assert info.labels == {"service": "probe"}
    ok_calls = [s for s in families["grpc_server_handled"].samples
                if s.labels.get("grpc_method") == "Ok" and s.labels["grpc_code"] == "OK"]
    assert ok_calls and ok_calls[0].value >= 1
    buckets = [s for s in families["grpc_server_handling_seconds"].samples
               if s.name.endswith("_bucket") and s.labels["grpc_method"] == "Ok"]
    assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value >= 1
    assert "process_resident_memory_bytes" in families  # the process collector comes along


def test_a_taken_port_stops_the_process_with_the_address(endpoint: metrics.MetricsEndpoint) -> None:
    with pytest.raises(OSError, match=f"cannot serve metrics on 127.0.0.1:{endpoint.port}"):
        metrics.serve("probe", "127.0.0.1", endpoint.port)


def test_port_zero_turns_the_endpoint_off() -> None:
    assert metrics.serve("probe", "127.0.0.1", 0) is None
