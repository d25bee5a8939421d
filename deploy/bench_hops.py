"""What one hop between processes costs on this machine, with nothing of
MedLedger in it: the floor under the record read target (docs/architecture.md,
Performance targets: a GetRecord crosses processes about five times, two of
them gRPC calls to other services).

Two kinds of hop, each measured back to back (the peer never idles) and then
paced (the peer has gone idle before every call, as consent and the ledger
have between one reader's calls):

* PostgreSQL: ``SELECT 1`` over one asyncpg connection to the local cluster.
* gRPC: an empty unary call (``grpc.health.v1.Health/Check``) from one asyncio
  process (uvloop) to another on loopback, as MedLedger's services call each
  other: grpc.aio hands every completion from its poller thread to the event
  loop, so each call wakes threads on both sides.

Usage: python deploy/bench_hops.py [--calls 3000] [--pauses-ms 5,20]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shlex
import sys
import time
from typing import Awaitable, Callable

import asyncpg
import grpc
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from medledger.testing.latency import pct
from medledger.testing.machine import machine_line
from medledger.testing.stack import PG_SERVER_URL, free_port

WARM_UP = 200


def line(what: str, pause_ms: float, ms: list[float]) -> str:
    paced = "back to back" if not pause_ms else f"paced, {pause_ms:g} ms idle before each"
    return (f"{what}, {paced}: p50 {pct(ms, .5):.3f} ms p90 {pct(ms, .9):.3f} ms p99 {pct(ms, .99):.3f} ms "
            f"(n={len(ms):,})")


async def timed_calls(call: Callable[[], Awaitable[object]], calls: int, pause_ms: float) -> list[float]:
    """Paced phases make a fifth of the calls (each waits its pause too)."""
    calls = calls if not pause_ms else max(1, calls // 5)
    for _ in range(WARM_UP):
        await call()
    ms = []
    for _ in range(calls):
        started = time.perf_counter()
        await call()
        ms.append((time.perf_counter() - started) * 1000)
        if pause_ms:
            await asyncio.sleep(pause_ms / 1000)
    return ms


def serve_health(port: int) -> None:
    """The peer process: a gRPC server with the health service only."""
    async def main() -> None:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    uvloop.install()
    asyncio.run(main())


async def postgres_hops(calls: int, pauses: list[float]) -> None:
    conn = await asyncpg.connect(PG_SERVER_URL, timeout=5)
    try:
        for pause in pauses:
            ms = await timed_calls(lambda: conn.fetchval("SELECT 1"), calls, pause)
            print(line("PostgreSQL SELECT 1", pause, ms), flush=True)
    finally:
        await conn.close()


async def grpc_hops(port: int, calls: int, pauses: list[float]) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest()
        for pause in pauses:
            ms = await timed_calls(lambda: stub.Check(request, timeout=5), calls, pause)
            print(line("gRPC empty unary call", pause, ms), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000, help="timed calls back to back (paced phases: a fifth)")
    parser.add_argument("--pauses-ms", type=lambda v: [float(p) for p in v.split(",")], default=[5.0, 20.0])
    args = parser.parse_args()
    print(f"# hops benchmark: python deploy/bench_hops.py {' '.join(shlex.quote(a) for a in sys.argv[1:])}", flush=True)
    print(machine_line(f"GRPC_EXPERIMENTS={os.environ.get('GRPC_EXPERIMENTS', '')!r}"), flush=True)
    pauses = [0.0, *args.pauses_ms]
    port = free_port()
    peer = multiprocessing.get_context("spawn").Process(target=serve_health, args=(port,), daemon=True)
    peer.start()
    uvloop.install()
    try:
        asyncio.run(grpc_hops(port, args.calls, pauses))
        asyncio.run(postgres_hops(args.calls, pauses))
    finally:
        peer.terminate()
        peer.join(5)


if __name__ == "__main__":
    main()
