"""The metrics' own cost, in-process (docs/benchmarks.md, The metrics' cost).

1. The gRPC metrics interceptor: the same trivial unary rpc served by
   GrpcServer with and without it (MEDLEDGER_BENCHMARK_WITHOUT_GRPC_METRICS),
   called sequentially from a client in the same event loop, rounds
   alternating, so the difference is the CPU it adds per call.
2. The hooks that stay on without the interceptor: the interceptor's
   bookkeeping alone, a consent decision's counter, the sequencer's per-batch
   counters and the per-fetch lag gauges.

Usage: python deploy/bench_metrics.py [--rounds N] [--calls N]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import time
import timeit
from typing import Any, Callable

import grpc

from medledger.consent import metrics as consent_metrics
from medledger.consent.decisions import Verdict
from medledger.ledger.intake import BatchPlan
from medledger.ledger.metrics import SequencerMetrics
from medledger.runtime import metrics
from medledger.runtime.grpc_server import GrpcServer
from medledger.testing.stack import free_port
from medledger.v1 import consent_pb2 as pb

SERVICE = "bench.v1.Echo"


async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


def register(server: grpc.aio.Server) -> None:
    handlers = {"Call": grpc.unary_unary_rpc_method_handler(echo)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


async def per_call_us(with_metrics: bool, calls: int) -> float:
    if with_metrics:
        os.environ.pop(metrics.BENCHMARK_WITHOUT_GRPC_METRICS, None)
    else:
        os.environ[metrics.BENCHMARK_WITHOUT_GRPC_METRICS] = "1"
    server = GrpcServer("127.0.0.1", free_port(), [SERVICE], [register], [])
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            call = channel.unary_unary(f"/{SERVICE}/Call")
            for _ in range(300):  # warm up
                await call(b"x")
            started = time.perf_counter()
            for _ in range(calls):
                await call(b"x")
            return (time.perf_counter() - started) / calls * 1e6
    finally:
        await server.stop(0)


class NoStatus:
    def code(self) -> None:
        return None


def hooks() -> list[tuple[str, Callable[[], Any], int]]:
    rpc = metrics._Rpc(f"/{SERVICE}/Call", "unary")
    context: Any = NoStatus()

    def bookkeeping() -> None:
        with metrics._counted(rpc, context):
            pass

    verdict = Verdict(True, pb.REASON_CONSENT)
    sequencer = SequencerMetrics(lambda: True)
    sequencer.loaded(0, {}, dict)
    plan = BatchPlan(offsets={(f"topic-{t}", p): 1000 for t in range(4) for p in range(3)})
    lag = metrics.ConsumerLag("bench")

    def lag_of_12_partitions() -> None:
        for partition in range(12):
            lag.observe("topic", partition, 100, 90)

    return [
        ("interceptor bookkeeping per call (timer, status, counter, histogram)", bookkeeping, 200_000),
        ("consent decision counter per CheckAccess", lambda: consent_metrics.decided(pb.PURPOSE_TREATMENT, verdict), 200_000),
        ("sequencer counters per committed batch", lambda: sequencer.committed(10_000, plan, 10), 100_000),
        ("consumer lag gauges per fetch of 12 partitions", lag_of_12_partitions, 50_000),
    ]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    print(f"# metrics cost: python deploy/bench_metrics.py --rounds {args.rounds} --calls {args.calls}", flush=True)
    off: list[float] = []
    on: list[float] = []
    for _ in range(args.rounds):
        off.append(await per_call_us(False, args.calls))
        on.append(await per_call_us(True, args.calls))
    print(f"unary rpc without the interceptor: {' '.join(f'{x:.0f}' for x in off)} µs/call, median {statistics.median(off):.1f}")
    print(f"unary rpc with the interceptor:    {' '.join(f'{x:.0f}' for x in on)} µs/call, median {statistics.median(on):.1f}")
    print(f"the interceptor adds {statistics.median(on) - statistics.median(off):.1f} µs per call (difference of medians)")
    for name, hook, number in hooks():
        best = min(timeit.repeat(hook, number=number, repeat=5)) / number
        print(f"{name}: {best * 1e6:.2f} µs")


if __name__ == "__main__":
    logging.disable(logging.WARNING)  # the benchmark switch logs a warning per server
    asyncio.run(main())
