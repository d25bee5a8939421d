"""Proof latency over gRPC at N entries, from outside, with the load generator
(one sequential gRPC client, as in bench_ledger.py) on the same machine.

Faster to set up than bench_ledger.py's proof phase: the log (N entries with
small synthetic events; proofs never read event bytes) is written through the
ledger's own store (``store.commit_batch``, tiles as the sequencer plans them)
instead of being sequenced from Kafka. Then one ledger process serves it:

1. tiles kept in memory (the default): proofs make no database round trip;
2. ``MEDLEDGER_LEDGER_LEAF_TILE_CACHE=0``: every proof reads its level-0 tile
   from PostgreSQL (the cost of a proof on a leaf tile the cache does not hold);

each interleaved with a call that does no work at all (GetVerifierKey), the
floor that the Python gRPC stack and the machine set at that moment.

    .venv/bin/python deploy/bench_proofs.py --entries 1200000 --calls 3000
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shlex
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import grpc
import psutil

from bench_ledger import bench_env, pct
from medledger.ledger import merkle, store
from medledger.ledger.app import LedgerApp
from medledger.ledger.intake import BatchPlan, NewEntry, SourceRecord
from medledger.ledger.tile_tree import TileEdge
from medledger.runtime.kafka import delete_topics, ensure_topics, topic_specs
from medledger.runtime.postgres import connect, drop_database, ensure_database, prepare_database
from medledger.runtime.settings import Topics
from medledger.testing.stack import PG_SERVER_URL, BOOTSTRAP, ServiceProcess, free_port
from medledger.v1 import ledger_pb2, ledger_pb2_grpc

BATCH = 50_000


async def load_log(db: str, entries: int) -> None:
    """N entries and their tiles, committed batch by batch as the sequencer would."""
    await ensure_database(db)
    await prepare_database(db, LedgerApp.migrations)
    tree, tiles, chain = merkle.CompactRange.empty(), TileEdge(), merkle.GENESIS_CHAIN
    conn = await connect(db)
    try:
        at = datetime.now(timezone.utc)
        for start in range(0, entries, BATCH):
            plan = BatchPlan()
            for index in range(start, min(entries, start + BATCH)):
                event = b"bench event %d" % index
                leaf = merkle.leaf_hash(event)
                chain = merkle.chain_hash(chain, leaf)
                for node_id, node in tree.append(leaf):
                    tiles.add(node_id, node)
                source = SourceRecord("bench", 0, index, event)
                plan.entries.append(NewEntry(index, f"bench-{index}", leaf, chain, event, source))
            plan.tiles = tiles.take()
            await store.commit_batch(conn, plan, at)
    finally:
        await conn.close()


def latencies(address: str, size: int, calls: int) -> tuple[list[float], list[float], list[float]]:
    """Inclusion (random index), consistency (random first size) and GetVerifierKey
    (a call that does nothing but answer: the floor the gRPC stack and the machine
    set) in turn, one sequential client, so all three see the same load."""
    rng = random.Random(1)
    inc: list[float] = []
    cons: list[float] = []
    floor: list[float] = []
    with grpc.insecure_channel(address) as channel:
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        for _ in range(50):  # connections
            stub.GetVerifierKey(ledger_pb2.GetVerifierKeyRequest())
        for _ in range(calls):
            t = time.perf_counter()
            stub.GetInclusionProof(ledger_pb2.GetInclusionProofRequest(index=rng.randrange(size), tree_size=size))
            inc.append((time.perf_counter() - t) * 1000)
            first = rng.randrange(1, size)
            t = time.perf_counter()
            stub.GetConsistencyProof(ledger_pb2.GetConsistencyProofRequest(first_size=first, second_size=size))
            cons.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            stub.GetVerifierKey(ledger_pb2.GetVerifierKeyRequest())
            floor.append((time.perf_counter() - t) * 1000)
    return inc, cons, floor


def line(name: str, values: list[float]) -> str:
    return f"{name}: p50 {pct(values, .5):.2f} ms p99 {pct(values, .99):.2f} ms ({len(values)} calls)"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=1_200_000)
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    print("# proof benchmark: python deploy/bench_proofs.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]), flush=True)
    topics = Topics(f"bench_{uuid.uuid4().hex[:8]}.")
    db = f"{PG_SERVER_URL}/bench_proofs_{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="medledger-bench-proofs-"))
    await ensure_topics(BOOTSTRAP, topic_specs(topics))
    try:
        t = time.monotonic()
        await load_log(db, args.entries)
        print(f"loaded {args.entries:,} entries and their tiles in {time.monotonic() - t:.1f}s", flush=True)
        for label, overrides in (("tiles in memory", {}), ("level-0 tiles from PostgreSQL", {"MEDLEDGER_LEDGER_LEAF_TILE_CACHE": "0"})):
            port = free_port()
            env = dict(bench_env(tmp, topics, db, port, free_port(), f"{PG_SERVER_URL}/unused"), **overrides)
            ledger = ServiceProcess("ledger", env, port, tmp / "ledger.log").start()
            try:
                ledger.wait_serving(120)
                # warm: the start-up load of the tile cache and its inner nodes
                # (proofs during it are served, with p99 up to ~7 ms here)
                await asyncio.sleep(20)
                inc, cons, floor = latencies(ledger.address, args.entries, args.calls)
                print(f"## {label}", flush=True)
                print(line(f"inclusion proof over gRPC at {args.entries:,}", inc), flush=True)
                print(line(f"consistency proof over gRPC at {args.entries:,}", cons), flush=True)
                print(line("GetVerifierKey (no work: the floor)", floor), flush=True)
                assert ledger.proc is not None
                rss = psutil.Process(ledger.proc.pid).memory_info().rss / 2**20
                print(f"ledger RSS after the proofs: {rss:.0f} MB", flush=True)
            finally:
                ledger.stop()
    finally:
        await drop_database(db)
        await delete_topics(BOOTSTRAP, topics.all)


if __name__ == "__main__":
    asyncio.run(main())
