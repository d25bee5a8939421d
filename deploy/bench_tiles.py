"""tlog-tiles side by side (issue #13): MedLedger end to end next to Tessera
v1.0.4's POSIX conformance server driven by its own hammer, on this machine in
one run, and Tessera's fsck against a live MedLedger of a million entries.

Side by side (the default):
1. End to end, 1 and 2 producer processes: each signs its share of ~400-byte
   events before the timed window (as the hammer generates its leaves ahead)
   and groups them by partition (Kafka's default partitioner), then publishes
   it into Kafka as fast as Kafka takes it, in whole batches (create_batch /
   send_batch), while the ledger, verifying every producer signature,
   sequences. The figure: entries in signed checkpoints per second, from the
   producers' start to the signing of the first checkpoint that covers the
   last event. --identity-share F puts that share of the events on
   identity.events (all MembershipEnded, which every token-revocation feed
   verifies and folds) and the rest evenly on the other three topics; by
   default a quarter goes to each. --one-send-each: the earlier generator,
   one aiokafka send() per record, which takes about ten times the CPU per
   record and so, on two cores, a large share of the ledger's CPU.
2. Overload: producers offering --overload-factor (2) times the capacity
   just measured (the fastest backlog drain of step 1) for --overload-seconds
   (10). Integration while they publish is compared with the ledger's
   capacity, its rate draining the backlog once they stopped (target: >=
   80%). --flood-events N adds a run as fast as Kafka takes them: then the
   broker absorbing ~400,000 events/s takes the cores.
3. Publish -> signed checkpoint latency at a steady rate (5,000 events/s; target p99 <= 250 ms),
   once the publisher has caught up on ledger.entries after the overload.
4. Tessera: `cmd/conformance/posix` on a fresh directory, its `internal/hammer`
   writing ~400-byte leaves with --dup_chance=0; entries in its checkpoints per
   second, from the hammer's start to the first checkpoint covering the goal.
Before each phase (and before Tessera's run) the page cache is written back
(testing.disk.settle), so no phase absorbs the writeback of the hundreds of MB
the bursts before it dirtied; --no-settle measures as runs before 2026-12-02
09:00 UTC did.

fsck (--fsck-entries N): N signed events are preloaded into Kafka, a fresh
ledger sequences them, Tessera's fsck verifies the whole log through the tiles
API (timed), then a stored hash is tampered (testing.ledger.tamper_stored_hash)
and fsck must fail; the hash is restored.

Go builds the Tessera tools (module proxy only), cached like the interop
tests' (tests/interop/tessera.py). Every figure is printed with the command.
Usage: python deploy/bench_tiles.py [--events N] [--producers 1,2] [--overload-factor F] [--overload-seconds S]
       [--flood-events N] [--one-send-each] [--producer-nice N] [--no-settle] [--identity-share F]
       [--rate R] [--seconds S] [--tessera-leaves N] [--hammer-writers W] [--skip-tessera]
       python deploy/bench_tiles.py --fsck-entries 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from hashlib import sha256
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Callable

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.interop builds Tessera's tools

from bench_ledger import Prepared, auditor_token, bench_env, checkpoint_latencies, paced_produce, pct  # noqa: E402
from bench_ledger import prepare_batches, produce_all, produce_prepared, wait_published  # noqa: E402
from bench_ledger import watch_checkpoints  # noqa: E402
from medledger.ledger.note import NoteSigner  # noqa: E402
from medledger.runtime.kafka import delete_topics, ensure_topics, topic_specs  # noqa: E402
from medledger.runtime.postgres import drop_database  # noqa: E402
from medledger.runtime.settings import Topics  # noqa: E402
from medledger.testing.ledger import sample_payload, sample_envelope, stub, tamper_stored_hash  # noqa: E402
from medledger.testing.cpu import CpuMeter, Usage  # noqa: E402
from medledger.testing.disk import settle  # noqa: E402
from medledger.testing.ledger import wait_for_checkpoint  # noqa: E402
from medledger.testing.machine import machine_line  # noqa: E402
from medledger.testing.metrics import scrape, value  # noqa: E402
from medledger.testing.stack import BOOTSTRAP, PG_SERVER_URL, PRODUCERS, ServiceProcess, free_port  # noqa: E402
from medledger.v1 import ledger_pb2, records_pb2  # noqa: E402
from tests.interop.tessera import TESSERA_VERSION, _cache_dir, _go_env, _run_go, build_tools  # noqa: E402

TESSERA = "github.com/transparency-dev/tessera"


# ---- events --------------------------------------------------------------------------------------


# The share of events on identity.events (all of them MembershipEnded, a type
# every revocation feed verifies and folds); the rest go evenly to the other
# three event topics. None: all four topics in turn (a quarter each), the mix
# of every run before 2026-12-02 12:00 UTC. Set by --identity-share before the
# producer processes fork.
IDENTITY_SHARE: float | None = None


def _topic_index(i: int) -> int:
    """Which event topic the i-th event goes to (see IDENTITY_SHARE)."""
    if IDENTITY_SHARE is None:
        return i % 4
    in_thousand = i % 1000
    return 0 if in_thousand < IDENTITY_SHARE * 1000 else 1 + in_thousand % 3


def sized_events(topics: Topics, n: int, offset: int = 0) -> list[tuple[str, bytes, bytes]]:
    """~400-byte signed envelopes of the types each topic allows: production-
    length (UUID) ids, no PHI; signed here, before any timed window."""
    out = []
    for i in range(offset, offset + n):
        t = _topic_index(i)
        env = sample_envelope(t, i, f"patient-{uuid.UUID(int=i % 5000)}", f"practitioner-{uuid.UUID(int=i % 300 + 1)}")
        if t == 2:  # a RecordCreated's size: the author's 64-byte signature
            env.payload.value = records_pb2.RecordCreated(author_signature=sha256(b"%d" % i).digest() * 2).SerializeToString()
        else:
            payload, _ = sample_payload(t, i)
            env.payload.Unpack(payload)
            for field in payload.DESCRIPTOR.fields:
                if field.name.endswith("_id") and field.type == field.TYPE_STRING and getattr(payload, field.name):
                    setattr(payload, field.name, str(uuid.UUID(int=i)))
            env.payload.Pack(payload)
        out.append((topics.event_topics[t], PRODUCERS.seal(env), env.aggregate_id.encode()))
    return out


def _producer_worker(conn: Connection, niceness: int, one_send_each: bool) -> None:
    """One producer process: signs its share when told to prepare, publishes
    it on "go" and answers (start, end) wall-clock times. ``niceness`` > 0
    lowers its CPU priority, standing in for producers on other machines.
    one_send_each: the earlier generator, one aiokafka send() per record
    (partitioner included), about ten times the CPU per record."""
    os.nice(niceness)
    records: list[tuple[str, bytes, bytes]] = []
    prepared: Prepared = []
    while (command := conn.recv()) is not None:
        if command[0] == "prepare":
            _, prefix, offset, count = command
            records = sized_events(Topics(prefix), count, offset)
            prepared = [] if one_send_each else prepare_batches(records, Topics(prefix))
            conn.send("ready")
        else:
            start, rate = time.time(), command[1]
            asyncio.run(produce_all(records) if one_send_each else produce_prepared(prepared, rate))
            conn.send((start, time.time()))
            records, prepared = [], []


class ProducerPool:
    """Producer processes, forked before anything else runs (no event loop or
    gRPC threads to inherit) so they share the bench's producer keys."""

    def __init__(self, count: int, niceness: int = 0, one_send_each: bool = False) -> None:
        context = multiprocessing.get_context("fork")
        self.pipes: list[Connection] = []
        self.procs = []
        for _ in range(count):
            parent, child = context.Pipe()
            proc = context.Process(target=_producer_worker, args=(child, niceness, one_send_each), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    def publish(self, prefix: str, offset: int, total: int, processes: int, rate: float | None = None,
                at_go: Callable[[], None] = lambda: None) -> tuple[float, float]:
        """Sign total events over `processes` producers, then publish them all at
        once (at ``rate`` events/s in all, else as fast as Kafka takes them);
        (go, last producer done) wall-clock times. ``at_go`` runs once all are
        signed, just before they start."""
        share = total // processes
        pipes = self.pipes[:processes]
        for k, pipe in enumerate(pipes):
            count = share if k < processes - 1 else total - share * (processes - 1)
            pipe.send(("prepare", prefix, offset + k * share, count))
        for pipe in pipes:
            assert pipe.recv() == "ready"
        at_go()
        go = time.time()
        for pipe in pipes:
            pipe.send(("go", rate / processes if rate else None))
        return go, max(pipe.recv()[1] for pipe in pipes)

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.send(None)
        for proc in self.procs:
            proc.join(10)


# ---- MedLedger -----------------------------------------------------------------------------------


@dataclass
class Ledger:
    """A throw-away ledger on its own topics and database."""

    topics: Topics
    db: str
    tmp: Path
    env: dict[str, str]
    proc: ServiceProcess

    async def checkpoints(self, above: int) -> list[tuple[float, int]]:
        """(signed_at epoch seconds, tree size) of every checkpoint larger than `above`."""
        conn = await asyncpg.connect(self.db)
        try:
            rows = await conn.fetch(
                "SELECT extract(epoch FROM signed_at)::float8 AS at, tree_size FROM checkpoints"
                " WHERE tree_size > $1 ORDER BY tree_size", above,
            )
        finally:
            await conn.close()
        return [(float(r["at"]), int(r["tree_size"])) for r in rows]

    def batches(self) -> tuple[float, float]:
        """(sequencing transactions, Kafka records in them) so far, from the ledger's metrics."""
        samples = scrape(self.proc.metrics_url)
        return (value(samples, "medledger_ledger_batch_records_count"), value(samples, "medledger_ledger_batch_records_sum"))

    async def size(self) -> int:
        conn = await asyncpg.connect(self.db)
        try:
            return int(await conn.fetchval("SELECT coalesce(max(tree_size), 0) FROM checkpoints"))
        finally:
            await conn.close()

    async def wait_size(self, size: int, timeout: float = 1800) -> None:
        deadline = time.monotonic() + timeout
        while (now := await self.size()) < size:
            if time.monotonic() > deadline:
                raise SystemExit(f"the ledger stalled at {now} of {size}; see {self.proc.log_path}")
            await asyncio.sleep(0.1)


@dataclass(frozen=True)
class Integration:
    """How fast one burst of events got into signed checkpoints."""

    events: int
    end_to_end: float  # events / (go -> checkpoint covering the last)
    offered: float  # events / (go -> last producer done)
    while_producing: float  # entries checkpointed / second while producers ran
    backlog: int  # events not yet checkpointed when the producers finished
    drain: float  # entries / second after the producers finished (capacity when backlogged)
    producing: Usage  # the stack's CPU while the producers ran
    draining: Usage  # and after they finished, until the last checkpoint
    batches: tuple[float, float]  # mean Kafka records per sequencing transaction in each window

    def cpu_lines(self) -> str:
        """CPU per entry checkpointed in each window, and how busy the ledger's busiest thread was."""
        during = self.events - self.backlog
        lines = []
        for label, usage, n, batch in (("while producing", self.producing, during, self.batches[0]),
                                       ("draining", self.draining, self.backlog, self.batches[1])):
            if n < 1000:  # e.g. producers done in a second, before the first checkpoints
                lines.append(f"  {label}: {n:,} entries checkpointed, too few to divide the CPU by")
                continue
            lines.append(f"  {label}: {usage.per_op_line(n, 'entry checkpointed')}; {usage.busiest_line('ledger')}; "
                         f"{batch:,.0f} records per sequencing transaction")
        return "\n".join(lines)


async def burst(ledger: Ledger, pool: ProducerPool, events: int, processes: int, rate: float | None = None) -> Integration:
    base = await ledger.size()
    cpu = CpuMeter.for_stack({"ledger": [ledger.proc.proc.pid] if ledger.proc.proc else []})
    batches: list[tuple[float, float]] = []

    def at_go() -> None:  # the events are signed: the timed window starts
        cpu.start()
        batches.append(ledger.batches())

    go, produced = pool.publish(ledger.topics.prefix, base, events, processes, rate, at_go=at_go)
    producing = cpu.stop()
    batches.append(ledger.batches())
    cpu.start()
    await ledger.wait_size(base + events)
    draining = cpu.stop()
    batches.append(ledger.batches())
    cps = await ledger.checkpoints(base)
    done = next(at for at, size in cps if size >= base + events)
    during = [(at, size) for at, size in cps if at <= produced]
    at_end = during[-1][1] if during else base
    backlog = base + events - at_end
    drain_s = done - (during[-1][0] if during else go)
    return Integration(
        events, events / (done - go), events / (produced - go), (at_end - base) / (produced - go),
        backlog, backlog / drain_s if drain_s > 0 else float("nan"), producing, draining,
        (_mean_batch(batches[0], batches[1]), _mean_batch(batches[1], batches[2])),
    )


def _mean_batch(before: tuple[float, float], after: tuple[float, float]) -> float:
    transactions = after[0] - before[0]
    return (after[1] - before[1]) / transactions if transactions else float("nan")


async def start_ledger(prefix: str, identity_port: int = 0) -> Ledger:
    topics = Topics(f"{prefix}_{uuid.uuid4().hex[:8]}.")
    db = f"{PG_SERVER_URL}/{prefix}_{uuid.uuid4().hex[:8]}"
    await ensure_topics(BOOTSTRAP, topic_specs(topics))
    tmp = Path(tempfile.mkdtemp(prefix="medledger-bench-tiles-"))
    port = free_port()
    env = bench_env(tmp, topics, db, port, identity_port or free_port(), f"{db}_identity")
    return Ledger(topics, db, tmp, env, ServiceProcess("ledger", env, port, tmp / "ledger.log"))


async def drop_ledger(ledger: Ledger, *more_topics: str) -> None:
    ledger.proc.stop()
    await drop_database(ledger.db)
    await drop_database(f"{ledger.db}_identity")
    await delete_topics(BOOTSTRAP, [*ledger.topics.all, *more_topics])


# ---- Tessera -------------------------------------------------------------------------------------


def tessera_binaries() -> tuple[Path, Path]:
    """Tessera's POSIX conformance server (go install) and its hammer: an
    internal package, so built inside a copy of the module's source that
    `go mod download` fetched through the module proxy."""
    go = shutil.which("go") or "/usr/local/go/bin/go"
    bin_dir = _cache_dir()
    bin_dir.mkdir(parents=True, exist_ok=True)
    env = _go_env(bin_dir)
    posix = bin_dir / "posix"
    if not posix.exists():
        _run_go(go, ["install", f"{TESSERA}/cmd/conformance/posix@{TESSERA_VERSION}"], bin_dir, env)
    hammer = bin_dir / "hammer"
    if not hammer.exists():
        done = subprocess.run([go, "mod", "download", "-json", f"{TESSERA}@{TESSERA_VERSION}"],
                              capture_output=True, text=True, check=True, env=env, cwd=bin_dir)
        source = bin_dir / "tessera-src"
        shutil.rmtree(source, ignore_errors=True)
        shutil.copytree(json.loads(done.stdout)["Dir"], source)
        for path in [source, *source.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)  # the module cache is read-only
        _run_go(go, ["build", "-o", str(hammer), "./internal/hammer"], source, env)
    return posix, hammer


def read_size(url: str) -> int:
    """The tree size a tlog checkpoint (signed note) states on its second line."""
    with urllib.request.urlopen(url + "checkpoint", timeout=5) as reply:
        return int(reply.read().decode().split("\n")[1])


def tessera_run(leaves: int, writers: int, tmp: Path) -> tuple[float, list[str]]:
    """Entries integrated into Tessera POSIX checkpoints per second under its hammer."""
    posix, hammer = tessera_binaries()
    signer = NoteSigner.generate("bench.tessera.local/log")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    storage = tmp / "tessera-log"
    server_cmd = [str(posix), f"--storage_dir={storage}", f"--listen=127.0.0.1:{port}", "--v=0"]
    hammer_cmd = [str(hammer), f"--log_public_key={signer.verifier_key}", f"--log_url={url}", "--max_read_ops=0",
                  "--num_readers_random=0", "--num_readers_full=0", f"--num_writers={writers}",
                  "--max_write_ops=100000", "--leaf_min_size=400", "--dup_chance=0", f"--leaf_write_goal={leaves}",
                  "--max_runtime=10m", "--show_ui=false"]
    commands = [f"LOG_PRIVATE_KEY=<a fresh note signer key> {shlex.join(server_cmd)}", shlex.join(hammer_cmd)]
    with open(tmp / "tessera.log", "ab") as log:
        server = subprocess.Popen(server_cmd, env=dict(os.environ, LOG_PRIVATE_KEY=signer.signer_key), stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                read_size(url)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"Tessera's posix server did not serve a checkpoint; see {tmp / 'tessera.log'}")
                time.sleep(0.2)
        with open(tmp / "hammer.log", "ab") as log:
            go = time.time()
            driver = subprocess.Popen(hammer_cmd, stdout=log, stderr=log)
        try:
            while (size := read_size(url)) < leaves:
                if driver.poll() is not None and read_size(url) < leaves:
                    raise SystemExit(f"the hammer exited at size {size}; see {tmp / 'hammer.log'}")
                time.sleep(0.05)
            return leaves / (time.time() - go), commands
        finally:
            driver.terminate()
            driver.wait(30)
    finally:
        server.terminate()
        server.wait(30)


# ---- runs ----------------------------------------------------------------------------------------


def _integration_line(label: str, r: Integration) -> str:
    return (f"{label}: {r.end_to_end:,.0f} entries/s into signed checkpoints ({r.events:,} events; producers offered "
            f"{r.offered:,.0f}/s; {r.while_producing:,.0f}/s checkpointed while they ran, then a backlog of "
            f"{r.backlog:,} drained at {r.drain:,.0f}/s)")


def _overload_verdict(r: Integration, capacity: float) -> str:
    """The share of capacity kept while overloaded. Capacity is the drain that
    followed, on the machine as it was then; the capacity measured before (which
    set the offered rate) is shown too, since steal moves both by minutes."""
    if r.backlog < r.events // 5:
        return "no backlog formed (the ledger kept up), so no overload to judge"
    if r.events / r.offered < 3.0:  # checkpoints come every 100 ms; a blip says nothing
        return "producers finished in under 3 s: too short to judge"
    return (f"integration while overloaded = {r.while_producing / r.drain:.0%} of capacity (target >= 80%; "
            f"{r.while_producing / capacity:.0%} of the {capacity:,.0f}/s measured before it)")


async def side_by_side(args: argparse.Namespace, pool: ProducerPool) -> None:
    def settle_before(phase: str) -> None:
        if args.settle:
            print(f"before {phase}: {settle()}", flush=True)

    ledger = await start_ledger("bench_tiles")
    try:
        ledger.proc.start().wait_serving(120)
        capacity = 0.0
        for processes in args.producers:
            settle_before("the next run")
            r = await burst(ledger, pool, args.events, processes)
            capacity = max(capacity, r.drain)
            print(_integration_line(f"MedLedger end to end, {processes} producer process(es), every signature verified", r),
                  flush=True)
            print(r.cpu_lines(), flush=True)

        # Overload: producers offering a multiple of the capacity just measured
        # (the rate at which the ledger drained a backlog), long enough to judge.
        rate = args.overload_factor * capacity
        events = int(rate * args.overload_seconds)
        settle_before("the overload")
        r = await burst(ledger, pool, events, max(args.producers), rate)
        print(_integration_line(f"overload, {max(args.producers)} producer processes offering "
                                f"{args.overload_factor:g} x {capacity:,.0f}/s", r) + f": {_overload_verdict(r, capacity)}", flush=True)
        print(r.cpu_lines(), flush=True)
        if args.flood_events:
            settle_before("the flood")
            r = await burst(ledger, pool, args.flood_events, max(args.producers))
            print(_integration_line(f"flood, {max(args.producers)} producer processes as fast as Kafka takes them", r)
                  + f": {_overload_verdict(r, capacity)}", flush=True)
            print(r.cpu_lines(), flush=True)

        # A steady rate is measured in a steady state: the publisher first
        # catches up on ledger.entries after the overload's backlog (as
        # bench_ledger waits before its latency run).
        base = await ledger.size()
        started = time.monotonic()
        await wait_published(ledger.topics.ledger_entries, base)
        print(f"followers: ledger.entries caught up {time.monotonic() - started:.1f}s after the overload's last "
              "checkpoint", flush=True)
        settle_before("the steady rate")
        arrivals: list[tuple[float, int]] = []
        stop = threading.Event()
        watcher = threading.Thread(target=watch_checkpoints, args=(ledger.proc.address, arrivals, stop), daemon=True)
        watcher.start()
        await asyncio.sleep(1.0)
        acked = await paced_produce(ledger.topics, args.rate, args.seconds, base, make=sized_events)
        await ledger.wait_size(base + len(acked))
        await asyncio.sleep(1.0)
        stop.set()
        latencies = await checkpoint_latencies(ledger.db, base, arrivals, acked)
        print(f"publish -> signed checkpoint at a steady {args.rate}/s for {args.seconds:.0f}s: p50 "
              f"{pct(latencies, .5):.0f} ms p99 {pct(latencies, .99):.0f} ms max {max(latencies):.0f} ms "
              f"({len(latencies)} events; target p99 <= 250 ms)", flush=True)
    finally:
        await drop_ledger(ledger)
    if args.skip_tessera:
        return
    settle_before("Tessera")
    rate, commands = tessera_run(args.tessera_leaves, args.hammer_writers, ledger.tmp)
    print(f"Tessera {TESSERA_VERSION} POSIX conformance server under its hammer: {rate:,.0f} entries/s into "
          f"checkpoints ({args.tessera_leaves:,} leaves of ~400 bytes, verifies nothing)", flush=True)
    for c in commands:
        print(f"#   {c}", flush=True)


def fsck_run(tools_fsck: Path, ledger: ServiceProcess, key_file: Path, origin: str, token: str) -> tuple[bool, float, str]:
    """(passed, seconds, output's last line). fsck reports in its log, not its exit status."""
    cmd = [str(tools_fsck), f"--storage_url={ledger.tiles_url}/", f"--public_key={key_file}", f"--origin={origin}",
           f"--bearer_token={token}", "--ui=false", "--N=4"]
    t = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    seconds = time.monotonic() - t
    output = done.stdout + done.stderr
    size = read_size(ledger.tiles_url + "/")
    ok = f"Successfully fsck'd log with size {size}" in output and "fsck failed" not in output
    lines = [ln for ln in output.splitlines() if "fsck" in ln] or output.splitlines()[-1:]
    return ok, seconds, lines[-1][-200:] if lines else ""


async def fsck_at_scale(args: argparse.Namespace, pool: ProducerPool) -> None:
    n = args.fsck_entries
    identity_port = free_port()
    ledger = await start_ledger("bench_fsck", identity_port)
    identity_topics = Topics(f"bench_fsck_identity_{uuid.uuid4().hex[:8]}.")
    identity: ServiceProcess | None = None
    try:
        tools = build_tools()
        t = time.monotonic()
        pool.publish(ledger.topics.prefix, 0, n, len(pool.pipes))
        print(f"preloaded {n:,} signed ~400-byte events into Kafka in {time.monotonic() - t:.0f}s", flush=True)
        identity, token = await auditor_token(ledger.env, ledger.tmp, identity_topics, identity_port)
        t = time.monotonic()
        ledger.proc.start().wait_serving(120)
        channel, ledger_stub = stub(ledger.proc.address)
        with channel:
            wait_for_checkpoint(ledger_stub, n, timeout=3600)
            key = ledger_stub.GetVerifierKey(ledger_pb2.GetVerifierKeyRequest())
        print(f"the ledger sequenced {n:,} entries (every signature verified) in {time.monotonic() - t:.0f}s", flush=True)
        key_file = ledger.tmp / "ledger.pub"
        key_file.write_text(key.verifier_key + "\n")
        print(f"#   {tools.fsck} --storage_url={ledger.proc.tiles_url}/ --public_key={key_file} --origin={key.origin} "
              "--bearer_token=<auditor token> --ui=false --N=4", flush=True)
        ok, seconds, last = fsck_run(tools.fsck, ledger.proc, key_file, key.origin, token)
        print(f"Tessera fsck of the live ledger at {n:,} entries: {'PASSED' if ok else 'FAILED'} in {seconds:.1f}s ({last})",
              flush=True)
        conn = await asyncpg.connect(ledger.db)
        try:
            level, index = 8, (n >> 8) // 2  # a hash of a level-1 tile in the middle of the log
            original = await tamper_stored_hash(conn, level, index, sha256(b"forged").digest())
            bad, seconds, last = fsck_run(tools.fsck, ledger.proc, key_file, key.origin, token)
            await tamper_stored_hash(conn, level, index, original)
        finally:
            await conn.close()
        print(f"Tessera fsck with one stored hash tampered (tree level {level}, index {index}): "
              f"{'PASSED (wrong!)' if bad else 'FAILED as it must'} after {seconds:.1f}s ({last})", flush=True)
        if not ok or bad:
            raise SystemExit(1)
    finally:
        if identity is not None:
            identity.stop()
        await drop_ledger(ledger, *identity_topics.all)


async def main(args: argparse.Namespace, pool: ProducerPool) -> None:
    command = "python deploy/bench_tiles.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(f"# tlog-tiles benchmark: {command}", flush=True)
    print(machine_line("Kafka, PostgreSQL and Tessera on this machine"), flush=True)
    sample = sized_events(Topics("sample."), 4000)
    print(f"# events: signed envelopes of {sum(len(v) for _, v, _ in sample) / len(sample):.0f} bytes on average", flush=True)
    if args.fsck_entries:
        await fsck_at_scale(args, pool)
    else:
        await side_by_side(args, pool)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=400_000, help="events per end-to-end run")
    parser.add_argument("--producers", type=lambda s: [int(p) for p in s.split(",")], default=[1, 2])
    parser.add_argument("--overload-factor", type=float, default=2.0,
                        help="overload: producers offer this multiple of the capacity measured end to end")
    parser.add_argument("--overload-seconds", type=float, default=10.0, help="overload: for this long")
    parser.add_argument("--flood-events", type=int, default=0,
                        help="also publish this many events as fast as Kafka takes them (the broker and the "
                             "generator then take the machine's cores)")
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--tessera-leaves", type=int, default=400_000)
    parser.add_argument("--hammer-writers", type=int, default=512)
    parser.add_argument("--skip-tessera", action="store_true")
    parser.add_argument("--no-settle", dest="settle", action="store_false",
                        help="do not write back the page cache before each phase (as runs before 2026-12-02 09:00 UTC)")
    parser.add_argument("--producer-nice", type=int, default=0,
                        help="run the producer processes at this niceness (they stand for other machines)")
    parser.add_argument("--one-send-each", action="store_true",
                        help="the earlier load generator: one aiokafka send() per record, ~10x the CPU per record "
                             "(it cannot pace: its overload run is as fast as Kafka takes them)")
    parser.add_argument("--fsck-entries", type=int, default=0, help="instead: fsck a live ledger of this many entries")
    parser.add_argument("--identity-share", type=float, default=None,
                        help="put this share of the events on identity.events and the rest evenly on the other "
                             "three topics (default: a quarter on each of the four)")
    parsed = parser.parse_args()
    IDENTITY_SHARE = parsed.identity_share
    producers = ProducerPool(2 if parsed.fsck_entries else max(parsed.producers), parsed.producer_nice,
                             parsed.one_send_each)
    try:
        asyncio.run(main(parsed, producers))
    finally:
        producers.close()
