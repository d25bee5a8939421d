"""Records benchmarks against the real Kafka and PostgreSQL
(docs/architecture.md, Performance targets: record write p99 <= 50 ms at
200 writes/s; record read with consent check and proof p99 <= 10 ms; and
issue 10: ListPatientRecords for a patient with 1,000 records p99 <= 100 ms).

Identity, consent, ledger and records start as real processes on random
ports, a throw-away topic prefix and databases; every call goes through
``medledger.client`` exactly as a hospital system makes it.

1. CreateRecord one at a time (the latency floor), then at a fixed rate (default 200/s for 30 s) of Observations of
   1-20 KB, each signed by the practitioner's key before the timed window
   (signing is the client's work, not the service's). Open loop: a write is
   due every 1/rate s whatever the previous ones did, so a slow service shows
   up as latency, not as a lower rate. Reported: the rpc's time (sent ->
   answered) and the time from when the write was due (queueing included).
   One patient gets 1,000 of the writes; the others are spread over 50.
   Each phase also reports the service's own handling time, read from its
   /metrics histogram (bucket bounds), to separate the service from the
   client and the two shared cores.
2. GetRecord by a practitioner of another hospital under the patient's
   TREATMENT consent: token checked, consent's CheckAccess asked with the
   reader's token, payload decrypted, proof bundle built, RecordsDisclosed
   committed. Sequential, after every write is on the ledger (so every read
   carries a proof). Also the server-side time of the two calls a read makes
   (consent's CheckAccess, the ledger's GetProofBundle), to say which hop
   makes the tail. --read-rates: one phase per rate; 0 (the default) sends
   each read as soon as the last is answered, a rate paces the one client, so
   that the work each read leaves behind (AccessDecided and RecordsDisclosed
   through two outboxes, the ledger, ledger.entries and two indexes) is done
   between reads rather than beside the next one.
3. ListPatientRecords for the patient with 1,000 records: the first page
   (default 50, and 200), by the custodian's practitioner and by the
   consented reader; and paging through all 1,000.

``--records-replicas 2`` runs two records processes on one database, as
k8s/base/records.yaml deploys it, and the client spreads calls over them
round robin. The default is one: on this benchmark's two shared cores a
second replica only competes with the first (docs/benchmarks.md).

Usage: python deploy/bench_records.py [--rate 200] [--seconds 30] [--alone 200] [--reads 2000] [--read-rates 0,25] [--lists 300] [--records-replicas 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shlex
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import grpc

from medledger.client import Client, Connection, Endpoints, Purpose, raw_public_key
from medledger.records.peers import PEER_SERVICES
from medledger.runtime.kafka import ensure_topics, topic_specs
from medledger.runtime.settings import Topics
from medledger.testing.consent import consent_env
from medledger.testing.cpu import CpuMeter
from medledger.testing.identity import IdentityHarness, generate_key, identity_env
from medledger.testing.latency import pct
from medledger.testing.machine import machine_line
from medledger.testing.metrics import present, scrape, value
from medledger.testing.records import observation, records_env
from medledger.testing.stack import BOOTSTRAP, PG_SERVER_URL, PRODUCERS, ServiceProcess, free_port, service_environment, tear_down
from medledger.v1 import ledger_pb2, ledger_pb2_grpc, records_pb2

BIG_PATIENT_RECORDS = 1000
OTHER_PATIENTS = 50


def summary(ms: list[float]) -> str:
    return f"p50 {pct(ms, .5):.2f} ms p99 {pct(ms, .99):.2f} ms max {max(ms):.2f} ms (n={len(ms):,})"


def sized_observation(patient_id: str, size: int, rng: random.Random) -> dict[str, object]:
    """An Observation of about ``size`` bytes of JSON (a note pads it)."""
    padding = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(max(0, size - 400)))
    return observation(patient_id, padding, valueQuantity={"value": rng.randint(40, 180), "unit": "beats/minute"})


class ServerTime:
    """A service's own handling time for one rpc, from its
    ``grpc_server_handling_seconds`` histogram (the gRPC metrics interceptor):
    what the service spends, without the client, the network and the
    benchmark's own threads. Summed over every replica. ``histogram`` and
    ``labels`` read another latency histogram the same way (records'
    ``medledger_records_peer_call_seconds``: a call as the caller waits for it)."""

    def __init__(self, replicas: list[ServiceProcess], method: str, histogram: str = "grpc_server_handling_seconds",
                 labels: dict[str, str] | None = None) -> None:
        self.urls = [replica.metrics_url for replica in replicas]
        self.histogram, self.labels = histogram, labels or {"grpc_method": method}
        self.before = self._read()

    def _read(self) -> tuple[dict[float, float], float]:
        buckets: dict[float, float] = {}
        total = 0.0
        for url in self.urls:
            samples = scrape(url)
            for s in present(samples, f"{self.histogram}_bucket", **self.labels):
                buckets[float(s.labels["le"])] = buckets.get(float(s.labels["le"]), 0.0) + s.value
            total += value(samples, f"{self.histogram}_sum", **self.labels)
        return buckets, total

    def since(self, what: str = "server-side") -> str:
        """Mean and bucket-bound p50/p99 of the calls since this was made."""
        (old, old_sum), (new, new_sum) = self.before, self._read()
        counts = {le: new[le] - old.get(le, 0.0) for le in sorted(new)}
        total = counts.get(float("inf"), 0.0)
        if not total:
            return f"{what}: no calls counted (metrics off?)"

        def bound(q: float) -> str:
            le = next(le for le, n in counts.items() if n >= q * total)
            return "> 10 s" if le == float("inf") else f"<= {le * 1000:g} ms"

        return f"{what}: mean {(new_sum - old_sum) / total * 1000:.2f} ms, p50 {bound(.5)}, p99 {bound(.99)}"


def login(connection: Connection, harness: IdentityHarness, hospital: Client, role: str = "physician") -> Client:
    key = generate_key()
    doctor = hospital.identity.register_practitioner(raw_public_key(key))
    hospital.identity.grant_membership(doctor.identity_id, hospital.identity_id, role)
    return connection.login(doctor.identity_id, key)


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def write_at_rate(doctor: Client, requests: list[records_pb2.CreateRecordRequest], rate: float) -> tuple[list[float], list[float], float, dict[str, int]]:
    """Send requests open loop at ``rate``/s; (rpc ms, ms since due, seconds, outcomes)."""
    rpc_ms: list[float] = []
    due_ms: list[float] = []
    outcomes: dict[str, int] = {}
    lock = threading.Lock()
    start = time.perf_counter() + 0.2

    def send(due: float, request: records_pb2.CreateRecordRequest) -> None:
        sent = time.perf_counter()
        try:
            doctor.records.submit(request)
            outcome = "OK"
        except Exception as exc:  # noqa: BLE001 - counted and reported
            outcome = type(exc).__name__
        done = time.perf_counter()
        with lock:
            rpc_ms.append((done - sent) * 1000)
            due_ms.append((done - due) * 1000)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

    with ThreadPoolExecutor(max_workers=32) as pool:
        for i, request in enumerate(requests):
            due = start + i / rate
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            pool.submit(send, due, request)
    return rpc_ms, due_ms, time.perf_counter() - start, outcomes


def wait_sequenced(ledger: ledger_pb2_grpc.LedgerServiceStub, at_least: int, timeout: float = 300) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if ledger.GetCheckpoint(ledger_pb2.GetCheckpointRequest(), timeout=5).tree_size >= at_least:
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"the ledger did not reach {at_least} entries in {timeout}s")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--reads", type=int, default=2000, help="GetRecord calls in each read phase")
    parser.add_argument("--read-rates", type=lambda v: [float(r) for r in v.split(",")], default=[0.0],
                        help="read phases, one per rate (reads/s of the one client; 0: back to back), e.g. 0,25")
    parser.add_argument("--lists", type=int, default=300)
    parser.add_argument("--alone", type=int, default=200, help="sequential writes before the rate phase")
    parser.add_argument("--records-replicas", type=int, default=1,
                        help="records processes on one database, called round robin (k8s/base/records.yaml runs 2)")
    args = parser.parse_args()
    command = "python deploy/bench_records.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(f"# records benchmark: {command}", flush=True)
    print(machine_line("Kafka and PostgreSQL on this machine",
                       f"{args.records_replicas} records replica(s), called round robin",
                       load_when="before the stack starts"), flush=True)
    started = time.monotonic()
    topics = Topics(f"bench_records_{uuid.uuid4().hex[:8]}.")
    await ensure_topics(BOOTSTRAP, topic_specs(topics))
    tmp = Path(tempfile.mkdtemp(prefix="medledger-bench-records-"))
    dbs: dict[str, str] = {}

    def database_for(service: str) -> str:
        dbs[service] = f"{PG_SERVER_URL}/bench_{service}_{uuid.uuid4().hex[:8]}"
        return dbs[service]

    env = service_environment(topics, database_for, tmp, PRODUCERS.write(tmp / "producers"), "bench.medledger.local/ledger")
    env["MEDLEDGER_LOG_LEVEL"] = os.environ.get("BENCH_LOG_LEVEL", "WARNING")
    processes: list[ServiceProcess] = []

    def start(name: str, **extra: str) -> ServiceProcess:
        own = dict(env, **extra)
        process = ServiceProcess(name, own, int(own[f"MEDLEDGER_{name.upper()}_PORT"]), tmp / f"{name}-{len(processes)}.log")
        processes.append(process.start())
        return process.wait_serving(120)

    try:
        operator_key = generate_key()
        identity_vars = identity_env(tmp, operator_key)
        identity = start("identity", **identity_vars)
        harness = IdentityHarness(identity.address, operator_key, identity, identity_vars)
        consent = start("consent", **consent_env(harness, tmp))
        ledger = start("ledger")
        records_vars = records_env(harness, tmp, env)  # one service identity and key-encryption key for every replica
        replicas = [start("records", MEDLEDGER_RECORDS_PORT=str(free_port()), **records_vars)
                    for _ in range(args.records_replicas)]
        cpu = CpuMeter.for_stack({"records": [r.proc.pid for r in replicas if r.proc],
                                  **{p.name: [p.proc.pid] for p in (identity, consent, ledger) if p.proc}})
        records_target = "ipv4:" + ",".join(replica.address for replica in replicas)
        endpoints = Endpoints(identity.address, consent.address, records_target, ledger.address)
        ledger_channel = grpc.insecure_channel(ledger.address)
        ledger_stub = ledger_pb2_grpc.LedgerServiceStub(ledger_channel)
        with Connection(endpoints) as connection:
            org_a, org_b = harness.organization(), harness.organization()
            hospital_a = connection.login(org_a.identity_id, org_a.private_key)
            hospital_b = connection.login(org_b.identity_id, org_b.private_key)
            writer, reader = login(connection, harness, hospital_a), login(connection, harness, hospital_b)
            patients = []
            for _ in range(OTHER_PATIENTS + 1):
                key = generate_key()
                patient_id = hospital_a.identity.register_patient(raw_public_key(key)).identity_id
                patient = connection.login(patient_id, key)
                patient.consent.grant(patient.consent.terms(org_b.identity_id, [Purpose.TREATMENT]))
                patients.append(patient_id)
            big, others = patients[0], patients[1:]
            big_records = min(BIG_PATIENT_RECORDS, int(args.rate * args.seconds))

            # -- 1. writes at a fixed rate
            total = int(args.rate * args.seconds)
            rng = random.Random(10)
            owners = [big] * big_records + [rng.choice(others) for _ in range(total - big_records)]
            rng.shuffle(owners)
            t = time.monotonic()
            sizes = [rng.randint(1024, 20 * 1024) for _ in owners]
            requests = [writer.records.signed_create(p, sized_observation(p, s, rng), organization_id=org_a.identity_id)
                        for p, s in zip(owners, sizes)]
            writer.records.submit(writer.records.signed_create(others[0], sized_observation(others[0], 2048, rng),
                                                               organization_id=org_a.identity_id))  # warm up
            print(f"signed {len(requests):,} CreateRecord requests of 1-20 KB (mean {sum(sizes) / len(sizes) / 1024:.1f} KB) "
                  f"in {time.monotonic() - t:.1f}s", flush=True)
            cpu.start()
            time.sleep(5)
            print(f"  idle stack: {cpu.stop().per_second_line()}", flush=True)
            before = ledger_stub.GetCheckpoint(ledger_pb2.GetCheckpointRequest(), timeout=5).tree_size
            alone = [writer.records.signed_create(p, sized_observation(p, rng.randint(1024, 20 * 1024), rng),
                                                  organization_id=org_a.identity_id) for p in rng.choices(others, k=args.alone)]
            server = ServerTime(replicas, "CreateRecord")
            alone_ms = [timed(lambda: writer.records.submit(request)) for request in alone]
            print(f"CreateRecord, 1 client, one write at a time (the floor): {summary(alone_ms)}; {server.since()}", flush=True)
            server = ServerTime(replicas, "CreateRecord")
            cpu.start()
            rpc_ms, due_ms, elapsed, outcomes = write_at_rate(writer, requests, args.rate)
            usage = cpu.stop()
            print(f"CreateRecord at {args.rate:.0f}/s for {args.seconds:.0f}s: {len(rpc_ms) / elapsed:,.1f} writes/s achieved, "
                  f"{outcomes}", flush=True)
            print(f"  rpc (sent -> answered): {summary(rpc_ms)}; target p99 <= 50 ms", flush=True)
            print(f"  since due (open loop, queueing included): {summary(due_ms)}", flush=True)
            print(f"  {server.since()}", flush=True)
            print(f"  {usage.per_op_line(len(rpc_ms), 'write')}; {usage.busiest_line('records', 'ledger')}", flush=True)
            drained = wait_sequenced(ledger_stub, before + len(alone) + outcomes.get("OK", 0))
            print(f"  every write's RecordCreated on the ledger {drained:.1f}s after the last write was answered", flush=True)

            # -- 2. reads under consent, with proofs
            record_ids = [r.record_id for r in reader.records.list(big, purpose=Purpose.TREATMENT, page_size=200)]
            for record_id in record_ids[:50]:  # warm up
                reader.records.get(record_id, purpose=Purpose.TREATMENT)
            for read_rate in args.read_rates:
                read_ms: list[float] = []
                proved = 0
                server = ServerTime(replicas, "GetRecord")
                calls = {"consent CheckAccess": ("consent", consent, "CheckAccess"),
                         "ledger GetProofBundle": ("ledger", ledger, "GetProofBundle")}
                hops = {hop: ServerTime([callee], method) for hop, (_, callee, method) in calls.items()}
                # the same two calls as records waits for them: transport and wake-ups included
                waits = {hop: ServerTime(replicas, method, "medledger_records_peer_call_seconds",
                                         {"grpc_service": PEER_SERVICES[peer], "grpc_method": method})
                         for hop, (peer, _, method) in calls.items()}
                cpu.start()
                paced_from = time.perf_counter()
                for i in range(args.reads):
                    if read_rate:  # one client, each read due at i / rate (a late one goes at once)
                        time.sleep(max(0.0, paced_from + i / read_rate - time.perf_counter()))
                    record_id = record_ids[i % len(record_ids)]
                    began = time.perf_counter()
                    reply = reader.records.get(record_id, purpose=Purpose.TREATMENT, organization_id=org_b.identity_id)
                    read_ms.append((time.perf_counter() - began) * 1000)
                    proved += reply.proof_status == records_pb2.PROOF_INCLUDED
                pace = f"one read every {1000 / read_rate:.0f} ms ({read_rate:g}/s)" if read_rate else "back to back"
                print(f"GetRecord under consent (CheckAccess + decrypt + proof bundle + RecordsDisclosed), 1 client, "
                      f"{pace}: {summary(read_ms)}; {proved:,} of {len(read_ms):,} with a proof; target p99 <= 10 ms",
                      flush=True)
                print(f"  {server.since()}", flush=True)
                for hop, timer in hops.items():  # the two calls a read makes, each in its own server
                    print(f"  {hop}, {timer.since()}; {waits[hop].since('as records waits for it')}", flush=True)
                usage = cpu.stop()
                print(f"  {usage.per_op_line(len(read_ms), 'read')}; "
                      f"{usage.busiest_line('records', 'consent', 'ledger')}", flush=True)

            # -- 3. lists of the patient with 1,000 records
            if args.lists > 0:  # --lists 0: no list phase
                for who, client, purpose in (("custodian's practitioner", writer, Purpose.TREATMENT),
                                             ("consented reader", reader, Purpose.TREATMENT)):
                    for size in (0, 200):
                        server = ServerTime(replicas, "ListPatientRecords")
                        ms = [timed(lambda: next(iter(client.records.list(big, purpose=purpose, page_size=size))))
                              for _ in range(args.lists)]
                        print(f"ListPatientRecords, first page of {size or 50}, {who}, patient with "
                              f"{big_records:,} records: {summary(ms)}; target p99 <= 100 ms", flush=True)
                        print(f"  {server.since()}", flush=True)
                pages = [timed(lambda: sum(1 for _ in reader.records.list(big, purpose=Purpose.TREATMENT, page_size=200)))
                         for _ in range(max(10, args.lists // 10))]
                print(f"ListPatientRecords, all {big_records:,} records in pages of 200, consented reader: "
                      f"{summary(pages)}", flush=True)
        ledger_channel.close()
        harness.close()
    finally:
        await tear_down(processes, list(dbs.values()), topics)
        print(f"# finished in {time.monotonic() - started:.0f}s; load average {os.getloadavg()[0]:.1f} (1 min); "
              f"logs in {tmp}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
