"""Ledger benchmarks against the real Kafka and PostgreSQL
(docs/architecture.md, Performance targets).

1. Sequencing throughput: N events are produced to the four event topics
   first, then a fresh ledger process sequences them; the rate is measured
   from its first committed entry to the last (Kafka -> durable log + tree).
2. Publish -> signed checkpoint latency at a fixed rate: events are produced
   at RATE/s while a WatchCheckpoints client records when each checkpoint
   arrives; an event's latency is the arrival of the first checkpoint that
   covers its index minus the moment its send was acknowledged.
3. Inclusion and consistency proof latency over gRPC at N entries (one
   client, sequential calls, random indices and sizes).
4. Ledger RSS at N entries.

--forged-every K: every K-th preloaded event carries a signature its
producer made over other bytes (well formed, so only the curve arithmetic
refuses it), as an insider who can write to the topics would send; the run
stops after the sequencing throughput and RSS, and counts the rejections.

Everything runs on loopback against a throw-away topic prefix and database.
Usage: python deploy/bench_ledger.py [--events N] [--rate R] [--seconds S] [--sequencing-only] [--forged-every K]
       [--without-grpc-metrics | --scrape-metrics-every SECONDS]   (the metrics' cost: docs/benchmarks.md)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

import asyncpg
import grpc
import psutil


from aiokafka.partitioner import DefaultPartitioner

from medledger.ledger.note import NoteSigner
from medledger.runtime.envelope import envelope
from medledger.runtime.kafka import delete_topics, ensure_topics, fill_batch, make_producer, topic_specs
from medledger.runtime.postgres import drop_database
from medledger.runtime.settings import Topics
from medledger.v1 import events_pb2, ledger_pb2, ledger_pb2_grpc
from medledger.testing.identity import IdentityHarness, generate_key, identity_env
from medledger.testing.latency import pct
from medledger.testing.ledger import sample_envelope
from medledger.testing.machine import machine_line
from medledger.testing.metrics import Scraper, add_metrics_arguments, metrics_env, metrics_note
from medledger.testing.stack import BOOTSTRAP, PG_SERVER_URL, PRODUCERS, ServiceProcess, free_port


def events_for(topics: Topics, n: int, offset: int = 0, forged_every: int = 0) -> list[tuple[str, bytes, bytes]]:
    """Realistic-size envelopes (ids, type, timestamps; no PHI) of the types
    each topic allows, signed by the bench's producer keys ahead of the timed
    window (as Tessera's hammer generates its leaves ahead), pre-serialized.
    forged_every K: every K-th carries its producer's signature of other bytes."""
    out = []
    for i in range(offset, offset + n):
        env = sample_envelope(i % 4, i, f"patient-{i % 5000:05d}", f"practitioner-{i % 300}")
        value = PRODUCERS.seal(env)
        if forged_every and i % forged_every == forged_every - 1:
            other = events_pb2.EventEnvelope()
            other.CopyFrom(env)
            other.actor += " (other bytes)"
            env.signature = PRODUCERS.signers[env.producer].sign(other).signature
            value = env.SerializeToString()
        out.append((topics.event_topics[i % 4], value, env.aggregate_id.encode()))
    return out


async def produce_all(records: list[tuple[str, bytes, bytes]]) -> None:
    producer = make_producer(BOOTSTRAP, linger_ms=20, max_batch_size=256 * 1024)
    await producer.start()
    try:
        pending = []
        for topic, value, key in records:
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 20000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


Prepared = list[tuple[str, int, list[tuple[bytes | None, bytes]]]]  # (topic, partition, [(key, value)]) in order


def prepare_batches(records: list[tuple[str, bytes, bytes]], topics: Topics) -> Prepared:
    """Records grouped by the partition Kafka's default partitioner gives
    their key (murmur2, as a producer's send() would), before any timed
    window: hashing keys is the load generator's work, not the log's."""
    partitioner = DefaultPartitioner()
    counts = {spec.name: spec.partitions for spec in topic_specs(topics)}
    groups: dict[tuple[str, int], list[tuple[bytes | None, bytes]]] = {}
    for topic, value, key in records:
        every = list(range(counts[topic]))
        groups.setdefault((topic, partitioner(key, every, every)), []).append((key, value))
    return [(topic, partition, items) for (topic, partition), items in groups.items()]


async def produce_prepared(prepared: Prepared, rate: float | None = None) -> None:
    """Publish whole batches per partition (create_batch/send_batch) taken in
    turn: about a tenth of the CPU per record of one send() each, so on a
    2-core machine the load generator leaves the cores to the broker and the
    ledger. rate: records per second (batches of 64 KiB, each sent when due);
    None: as fast as Kafka takes them (batches of 1 MiB)."""
    producer = make_producer(BOOTSTRAP, max_batch_size=(64 if rate else 1024) * 1024)
    await producer.start()
    loop = asyncio.get_running_loop()
    due = loop.time()
    try:
        sent = []
        queues = [(topic, partition, list(reversed(items))) for topic, partition, items in prepared]
        while queues:
            for topic, partition, items in queues:  # one batch per partition in turn
                batch = fill_batch(producer, items)
                if rate:
                    await asyncio.sleep(max(0.0, due - loop.time()))
                    due += batch.record_count() / rate
                sent.append(await producer.send_batch(batch, topic, partition=partition))
            queues = [q for q in queues if q[2]]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def count_entries(url: str) -> tuple[int, int]:
    """(entries, rejected records) so far."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow("SELECT (SELECT count(*) FROM entries) AS n, (SELECT count(*) FROM rejected) AS r")
        return int(row["n"]), int(row["r"])
    finally:
        await conn.close()


async def sequencing_window(url: str) -> tuple[int, float]:
    """(entries, seconds between the first and last commit), from the log itself."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, extract(epoch FROM max(sequenced_at) - min(sequenced_at)) AS span FROM entries"
        )
        return int(row["n"]), float(row["span"] or 0.0)
    finally:
        await conn.close()


def watch_checkpoints(address: str, arrivals: list[tuple[float, int]], stop: threading.Event) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        stream = stub.WatchCheckpoints(ledger_pb2.WatchCheckpointsRequest())
        try:
            for cp in stream:
                arrivals.append((time.time(), cp.tree_size))
                if stop.is_set():
                    stream.cancel()
                    return
        except grpc.RpcError:
            return  # cancelled at the end of the run


async def paced_produce(
    topics: Topics, rate: int, seconds: float, offset: int,
    make: Callable[[Topics, int, int], list[tuple[str, bytes, bytes]]] = events_for,
) -> dict[str, float]:
    """Produce at a fixed rate events that ``make`` signed beforehand; returns event_id -> ack time."""
    producer = make_producer(BOOTSTRAP, linger_ms=1)
    await producer.start()
    acked: dict[str, float] = {}
    try:
        total = int(rate * seconds)
        records = make(topics, total, offset)
        ids = [_event_id(v) for _, v, _ in records]
        start = time.monotonic()
        tick = 0.01
        per_tick = max(1, int(rate * tick))
        futures = []
        for i in range(0, total, per_tick):
            due = start + (i / rate)
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            for j in range(i, min(total, i + per_tick)):
                topic, value, key = records[j]
                fut = await producer.send(topic, value, key=key)
                fut.add_done_callback(lambda _f, eid=ids[j]: acked.__setitem__(eid, time.time()))
                futures.append(fut)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return acked


async def wait_published(topic: str, n: int) -> None:
    """Until the follower publisher has put n entries on ledger.entries, so the
    proof benchmark measures a ledger that is not also publishing a backlog."""
    from aiokafka import TopicPartition

    from medledger.runtime.kafka import make_consumer

    consumer = make_consumer(BOOTSTRAP, group_id=None)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        while (await consumer.end_offsets([tp]))[tp] < n:
            await asyncio.sleep(0.5)
    finally:
        await consumer.stop()


async def checkpoint_latencies(
    db: str, first_index: int, arrivals: list[tuple[float, int]], acked: dict[str, float]
) -> list[float]:
    """Milliseconds from each acknowledged send to the arrival of the first
    checkpoint covering its index, for the entries from first_index on."""
    import bisect

    conn = await asyncpg.connect(db)
    try:
        rows = await conn.fetch("SELECT idx, event_id FROM entries WHERE idx >= $1", first_index)
    finally:
        await conn.close()
    arrivals = sorted(arrivals)
    sizes = [s for _, s in arrivals]
    latencies = []
    for r in rows:
        pos = bisect.bisect_right(sizes, r["idx"])
        if pos < len(arrivals) and r["event_id"] in acked:
            latencies.append((arrivals[pos][0] - acked[r["event_id"]]) * 1000)
    return latencies


def _event_id(value: bytes) -> str:
    return events_pb2.EventEnvelope.FromString(value).event_id


def proof_latencies(address: str, size: int, calls: int) -> tuple[list[float], list[float]]:
    rng = random.Random(1)
    inc, cons = [], []
    with grpc.insecure_channel(address) as channel:
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        for _ in range(50):  # warm up connections and caches
            stub.GetInclusionProof(ledger_pb2.GetInclusionProofRequest(index=rng.randrange(size), tree_size=size))
        for _ in range(calls):
            index = rng.randrange(size)
            t = time.perf_counter()
            stub.GetInclusionProof(ledger_pb2.GetInclusionProofRequest(index=index, tree_size=size))
            inc.append((time.perf_counter() - t) * 1000)
            first = rng.randrange(1, size)
            t = time.perf_counter()
            stub.GetConsistencyProof(ledger_pb2.GetConsistencyProofRequest(first_size=first, second_size=size))
            cons.append((time.perf_counter() - t) * 1000)
    return inc, cons


def bench_env(tmp: Path, topics: Topics, db: str, port: int, identity_port: int, identity_db: str) -> dict[str, str]:
    """Settings of a throw-away ledger (and the identity service that issues
    its auditor tokens) under tmp: a fresh checkpoint key, the bench's producer keys."""
    key = tmp / "bench.key"
    key.write_text(NoteSigner.generate("bench.medledger.local/ledger").signer_key + "\n")
    return dict(os.environ, MEDLEDGER_KAFKA_BOOTSTRAP=BOOTSTRAP, MEDLEDGER_TOPIC_PREFIX=topics.prefix,
                MEDLEDGER_LEDGER_DATABASE_URL=db, MEDLEDGER_LEDGER_PORT=str(port), MEDLEDGER_RUN_DIR=str(tmp),
                MEDLEDGER_LEDGER_SIGNING_KEY_FILE=str(key), MEDLEDGER_LEDGER_ORIGIN="bench.medledger.local/ledger",
                MEDLEDGER_LOG_LEVEL="WARNING", MEDLEDGER_IDENTITY_ADDRESS=f"127.0.0.1:{identity_port}",
                MEDLEDGER_IDENTITY_PORT=str(identity_port), MEDLEDGER_IDENTITY_DATABASE_URL=identity_db,
                **PRODUCERS.write(tmp / "producers"))


async def auditor_token(env: dict[str, str], tmp: Path, identity_topics: Topics, identity_port: int) -> tuple[ServiceProcess, str]:
    """A running identity service on its own topics (so the ledger's log stays
    as measured) and a network auditor's token from it."""
    operator_key = generate_key()
    await ensure_topics(BOOTSTRAP, topic_specs(identity_topics))
    id_env = dict(env, MEDLEDGER_TOPIC_PREFIX=identity_topics.prefix, **identity_env(tmp, operator_key))
    identity = ServiceProcess("identity", id_env, identity_port, tmp / "identity.log").start().wait_serving(60)
    harness = IdentityHarness(identity.address, operator_key, identity, id_env)
    token = harness.auditor().token
    harness.close()
    return identity, token


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=int(os.environ.get("BENCH_EVENTS", "1000000")))
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--proof-calls", type=int, default=2000)
    parser.add_argument("--sequencing-only", action="store_true", help="stop after the sequencing throughput and RSS")
    parser.add_argument("--forged-every", type=int, default=0,
                        help="every K-th preloaded event carries a signature of other bytes (implies --sequencing-only)")
    add_metrics_arguments(parser)
    args = parser.parse_args()
    command = "python deploy/bench_ledger.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    topics = Topics(f"bench_{uuid.uuid4().hex[:8]}.")
    db = f"{PG_SERVER_URL}/bench_ledger_{uuid.uuid4().hex[:8]}"
    await ensure_topics(BOOTSTRAP, topic_specs(topics))
    tmp = Path(tempfile.mkdtemp(prefix="medledger-bench-"))
    key = tmp / "bench.key"
    identity_topics = Topics(f"bench_identity_{uuid.uuid4().hex[:8]}.")
    port, identity_port = free_port(), free_port()
    identity_db = f"{PG_SERVER_URL}/bench_identity_{uuid.uuid4().hex[:8]}"
    env = dict(bench_env(tmp, topics, db, port, identity_port, identity_db), **metrics_env(args))
    print(f"# ledger benchmark: {command}", flush=True)
    print(machine_line("Kafka and PostgreSQL on this machine"), flush=True)

    t = time.monotonic()
    await produce_all(events_for(topics, args.events, forged_every=args.forged_every))
    forged = args.events // args.forged_every if args.forged_every else 0
    print(f"preloaded {args.events} events into Kafka in {time.monotonic() - t:.1f}s"
          + (f", {forged:,} of them forged" if forged else ""), flush=True)

    ledger = ServiceProcess("ledger", env, port, tmp / "ledger.log").start()
    try:
        ledger.wait_serving(120)
        t = time.monotonic()
        with Scraper([ledger.metrics_url], args.scrape_metrics_every) as scraper:
            while True:
                n, rejected = await count_entries(db)
                if n + rejected >= args.events:
                    break
                if time.monotonic() - t > 1800:
                    raise SystemExit(f"sequencing stalled at {n}")
                await asyncio.sleep(0.5)
        n, span = await sequencing_window(db)
        rate = n / span if span else float("nan")
        print(f"sequencing throughput: {n} events in {span:.2f}s = {rate:,.0f} events/s (target >= 20,000; "
              f"{metrics_note(args, scraper)})"
              + (f"; {rejected:,} forged records rejected beside them" if forged else ""), flush=True)

        assert ledger.proc is not None  # started above
        proc = psutil.Process(ledger.proc.pid)
        rss = proc.memory_info().rss / 2**20
        print(f"ledger RSS at {n:,} entries: {rss:.0f} MB (target <= 300 MB)", flush=True)
        if args.sequencing_only or forged:
            return

        t = time.monotonic()
        await wait_published(topics.ledger_entries, n)
        print(f"followers: ledger.entries caught up {time.monotonic() - t:.1f}s after sequencing finished", flush=True)
        inc, cons = proof_latencies(ledger.address, n, args.proof_calls)
        print(f"inclusion proof over gRPC at {n:,}: p50 {pct(inc, .5):.2f} ms p99 {pct(inc, .99):.2f} ms ({len(inc)} calls; target p99 <= 2 ms)")
        print(f"consistency proof over gRPC at {n:,}: p50 {pct(cons, .5):.2f} ms p99 {pct(cons, .99):.2f} ms ({len(cons)} calls; target p99 <= 2 ms)", flush=True)

        # an auditor, as the entries require: identity on its own topics so the log stays as measured
        identity, token = await auditor_token(env, tmp, identity_topics, identity_port)
        pinned = tmp / "ledger.pub"  # the auditor pins the key; producer signatures: deploy/bench_audit.py
        pinned.write_text(NoteSigner.from_signer_key(key.read_text()).verifier_key + "\n")
        audit_cmd = [str(Path(sys.executable).parent / "medledger"), "audit", "verify", "--ledger", ledger.address,
                     "--verifier-key-file", str(pinned), "--hashes-only", "--no-progress"]
        for attempt in ("first (cold) run", "second run"):
            audit_out = subprocess.run(audit_cmd + ["--token", token], capture_output=True, text=True, env=env)
            result = audit_out.stdout.strip().splitlines()[-1] if audit_out.returncode == 0 else audit_out.stderr.strip()
            print(f"audit verify of the whole log over gRPC, {attempt} ({' '.join(audit_cmd[1:])}): {result} "
                  "(target >= 100,000 entries/s)", flush=True)
        identity.stop()

        arrivals: list[tuple[float, int]] = []
        stop = threading.Event()
        watcher = threading.Thread(target=watch_checkpoints, args=(ledger.address, arrivals, stop), daemon=True)
        watcher.start()
        await asyncio.sleep(1.0)
        acked = await paced_produce(topics, args.rate, args.seconds, args.events)
        await asyncio.sleep(2.0)
        stop.set()
        latencies = await checkpoint_latencies(db, n, arrivals, acked)
        print(
            f"publish -> signed checkpoint at {args.rate}/s for {args.seconds:.0f}s: p50 {pct(latencies, .5):.0f} ms "
            f"p99 {pct(latencies, .99):.0f} ms max {max(latencies):.0f} ms ({len(latencies)} events; target p99 <= 250 ms)",
            flush=True,
        )
        print(f"ledger RSS after the latency run: {proc.memory_info().rss / 2**20:.0f} MB")
    finally:
        ledger.stop()
        await drop_database(db)
        await drop_database(identity_db)
        await delete_topics(BOOTSTRAP, topics.all + identity_topics.all)


if __name__ == "__main__":
    asyncio.run(main())
