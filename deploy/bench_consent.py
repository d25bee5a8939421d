"""Consent benchmarks against the real Kafka and PostgreSQL
(docs/architecture.md, Performance targets:
CheckAccess p99 <= 3 ms; revoke -> denied everywhere <= 1 s).

1. Load: N ConsentGranted events (Ed25519-signed by synthetic patient keys
   over the canonical terms, as GrantConsent would record them) are produced
   straight to consent.events; then two consent replicas start and load them
   into their projections (time to SERVING, RSS).
2. CheckAccess over gRPC with N consents loaded, as the records service asks
   it: forwarding the practitioner's own token (the decision is always for the
   token's subject): one client issuing sequential calls (latency), then four
   concurrent clients across both replicas (throughput and latency under load).
   Every call is a real decision: token verified, projection read,
   AccessDecided handed to Kafka.
3. Revoke -> DENY across replicas: a registered patient grants through
   replica A; a poller hammers replica B with CheckAccess while the patient
   revokes on A. Reported: time from sending RevokeConsent to B's first DENY,
   how long RevokeConsent took (it includes the staleness wait), and whether
   B ever answered ALLOW after RevokeConsent returned (must be never).

Loopback only; a throw-away topic prefix and databases, deleted at the end.
Bounded: about 80 s with the defaults.
Usage: python deploy/bench_consent.py [--consents N] [--calls N] [--revokes N]
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
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import grpc
import psutil


from medledger.consent.signing import sign_terms
from medledger.runtime.envelope import envelope
from medledger.runtime.kafka import ensure_topics, make_producer, topic_specs
from medledger.runtime.settings import Topics
from medledger.v1 import consent_pb2 as pb
from medledger.v1 import consent_pb2_grpc
from medledger.testing.consent import consent_env, grant_request, terms
from medledger.testing.identity import IdentityHarness, generate_key, identity_env
from medledger.testing.latency import pct
from medledger.testing.machine import machine_line
from medledger.testing.metrics import Scraper, add_metrics_arguments, metrics_env, metrics_note
from medledger.testing.stack import BOOTSTRAP, PRODUCERS, PG_SERVER_URL, ServiceProcess, free_port, tear_down

CATEGORIES = ["Observation", "Condition", "MedicationRequest", "DiagnosticReport", "Immunization"]
PURPOSES = [pb.PURPOSE_TREATMENT, pb.PURPOSE_PAYMENT, pb.PURPOSE_OPERATIONS, pb.PURPOSE_RESEARCH]


def summary(ms: list[float]) -> str:
    return f"p50 {pct(ms, .5):.2f} ms p99 {pct(ms, .99):.2f} ms max {max(ms):.2f} ms"


def synthetic_grants(n: int, per_patient: int, doc: str, org: str) -> tuple[list[tuple[bytes, bytes]], list[str]]:
    """(key, value) records of n signed ConsentGranted envelopes, and the patient ids.
    Each patient's first consent names the practitioner (even patients) or its
    organization (odd), the others name synthetic practitioners."""
    rng = random.Random(7)
    now = datetime.now(timezone.utc)
    records, patients = [], []
    for p in range(n // per_patient):
        patient = f"bench-patient-{p}"
        patients.append(patient)
        key = generate_key()
        for c in range(per_patient):
            grantee, kind = (doc, pb.GRANTEE_KIND_PRACTITIONER) if p % 2 == 0 else (org, pb.GRANTEE_KIND_ORGANIZATION)
            if c:
                grantee, kind = f"bench-practitioner-{rng.randrange(5000)}", pb.GRANTEE_KIND_PRACTITIONER
            t = terms(
                patient, grantee, signer_key_id="bench-key", purposes=rng.sample(PURPOSES, rng.randint(1, 3)),
                categories=rng.sample(CATEGORIES, rng.randint(1, 4)) if rng.random() < 0.7 else (),
                valid_from=now - timedelta(days=1), valid_until=now + timedelta(days=rng.randint(30, 900)),
            )
            if c == 0:
                t.ClearField("purposes")
                t.purposes.append(pb.PURPOSE_TREATMENT)
            _, signature = sign_terms(key, t)
            payload = pb.ConsentGranted(
                terms=t, signature=signature, grantee_kind=kind, signer_role=pb.SIGNER_ROLE_PATIENT, submitted_by=patient
            )
            env = envelope(payload, aggregate_id=patient, producer="consent", actor=patient)
            records.append((patient.encode(), PRODUCERS.seal(env)))
    return records, patients


async def produce(topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = make_producer(BOOTSTRAP, linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    try:
        for start in range(0, len(records), 5000):
            futures = [await producer.send(topic, value, key=key) for key, value in records[start:start + 5000]]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def mirrored_consents(url: str, n: int, deadline: float) -> int:
    """Wait until the consents table holds n rows (or the deadline); the count."""
    while True:
        conn = await asyncpg.connect(url)
        try:
            count = int(await conn.fetchval("SELECT count(*) FROM consents"))
        finally:
            await conn.close()
        if count >= n or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.5)


def check_request(patient: str, category: str) -> pb.CheckAccessRequest:
    """For the caller's token's subject (the practitioner whose token is forwarded)."""
    return pb.CheckAccessRequest(patient_id=patient, purpose=pb.PURPOSE_TREATMENT, category=category)


def timed_checks(stub: consent_pb2_grpc.ConsentServiceStub, metadata: tuple[tuple[str, str], ...],
                 requests: list[pb.CheckAccessRequest], out: list[float], outcomes: dict[str, int]) -> None:
    for request in requests:
        t = time.perf_counter()
        try:
            reply = stub.CheckAccess(request, metadata=metadata, timeout=5)
            name = pb.Decision.Name(reply.decision)
        except grpc.RpcError as exc:
            name = exc.code().name
        out.append((time.perf_counter() - t) * 1000)
        outcomes[name] = outcomes.get(name, 0) + 1


def poll(stub: consent_pb2_grpc.ConsentServiceStub, metadata: tuple[tuple[str, str], ...], request: pb.CheckAccessRequest,
         seen: list[tuple[float, float, int]], stop: threading.Event) -> None:
    """(sent, answered, decision) for back-to-back CheckAccess calls until stop."""
    while not stop.is_set():
        sent = time.monotonic()
        try:
            decision = stub.CheckAccess(request, metadata=metadata, timeout=5).decision
        except grpc.RpcError:
            decision = -1
        seen.append((sent, time.monotonic(), decision))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--consents", type=int, default=100_000)
    parser.add_argument("--per-patient", type=int, default=10)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--revokes", type=int, default=20)
    add_metrics_arguments(parser)
    args = parser.parse_args()
    command = "python deploy/bench_consent.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(f"# consent benchmark: {command}", flush=True)
    print(machine_line("Kafka and PostgreSQL on this machine"), flush=True)
    started = time.monotonic()
    topics = Topics(f"bench_consent_{uuid.uuid4().hex[:8]}.")
    await ensure_topics(BOOTSTRAP, topic_specs(topics))
    tmp = Path(tempfile.mkdtemp(prefix="medledger-bench-consent-"))
    dbs = {name: f"{PG_SERVER_URL}/bench_{name}_{uuid.uuid4().hex[:8]}" for name in ("identity", "consent")}
    identity_port = free_port()
    env = dict(os.environ, MEDLEDGER_KAFKA_BOOTSTRAP=BOOTSTRAP, MEDLEDGER_TOPIC_PREFIX=topics.prefix,
               MEDLEDGER_RUN_DIR=str(tmp), MEDLEDGER_LOG_LEVEL="WARNING",
               MEDLEDGER_IDENTITY_ADDRESS=f"127.0.0.1:{identity_port}", MEDLEDGER_IDENTITY_PORT=str(identity_port),
               MEDLEDGER_IDENTITY_DATABASE_URL=dbs["identity"], MEDLEDGER_CONSENT_DATABASE_URL=dbs["consent"],
               **PRODUCERS.write(tmp / "producers"), **metrics_env(args))
    operator_key = generate_key()
    processes: list[ServiceProcess] = []
    try:
        identity_vars = identity_env(tmp, operator_key)
        identity = ServiceProcess("identity", dict(env, **identity_vars), identity_port, tmp / "identity.log").start()
        processes.append(identity)
        identity.wait_serving(60)
        harness = IdentityHarness(identity.address, operator_key, identity, identity_vars)
        org = harness.organization()
        doc = harness.practitioner(org)
        asker = doc  # the records service forwards the reading practitioner's own token
        patient = harness.patient(org)

        t = time.monotonic()
        records, patients = synthetic_grants(args.consents, args.per_patient, doc.identity_id, org.identity_id)
        signed = time.monotonic() - t
        t = time.monotonic()
        await produce(topics.consent_events, records)
        print(f"signed {len(records):,} grants in {signed:.1f}s, produced to consent.events in {time.monotonic() - t:.1f}s",
              flush=True)

        replicas, load_s = [], []
        for name in ("a", "b"):  # one after the other: the first creates the database
            port = free_port()
            extra = consent_env(harness, tmp, MEDLEDGER_CONSENT_PORT=str(port))
            t = time.monotonic()
            replica = ServiceProcess("consent", dict(env, **extra), port, tmp / f"consent-{name}.log").start()
            processes.append(replica)
            replicas.append(replica.wait_serving(120))
            load_s.append(time.monotonic() - t)
        rss = []
        for r in replicas:
            assert r.proc is not None  # started above
            rss.append(psutil.Process(r.proc.pid).memory_info().rss / 2**20)
        print(f"replicas a and b started, loaded {len(records):,} consents from consent.events and were SERVING after "
              f"{load_s[0]:.1f}s and {load_s[1]:.1f}s (RSS {rss[0]:.0f} MB, {rss[1]:.0f} MB)", flush=True)

        t = time.monotonic()
        mirrored = await mirrored_consents(dbs["consent"], len(records), deadline=t + 120)
        print(f"consents table (PostgreSQL copy, housekeeping replica) held {mirrored:,} rows "
              f"{load_s[0] + load_s[1] + time.monotonic() - t:.1f}s after replica a started", flush=True)

        channels = [grpc.insecure_channel(r.address) for r in replicas]
        stubs = [consent_pb2_grpc.ConsentServiceStub(c) for c in channels]
        rng = random.Random(11)
        requests = [check_request(rng.choice(patients), rng.choice(CATEGORIES)) for _ in range(args.calls)]
        warm: list[float] = []
        timed_checks(stubs[0], asker.metadata, requests[:500], warm, {})
        latencies: list[float] = []
        outcomes: dict[str, int] = {}
        t = time.monotonic()
        with Scraper([r.metrics_url for r in (identity, *replicas)], args.scrape_metrics_every) as scraper:
            timed_checks(stubs[0], asker.metadata, requests, latencies, outcomes)
        elapsed = time.monotonic() - t
        print(f"CheckAccess, 1 client, sequential, {len(latencies):,} calls with {len(records):,} consents loaded: "
              f"{summary(latencies)} ({len(latencies) / elapsed:,.0f}/s; {outcomes}; target p99 <= 3 ms; "
              f"{metrics_note(args, scraper)})", flush=True)

        loaded: list[list[float]] = [[] for _ in range(4)]
        outcomes = {}
        threads = [
            threading.Thread(target=timed_checks, args=(stubs[i % 2], asker.metadata, requests[i::4], loaded[i], outcomes))
            for i in range(4)
        ]
        t = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - t
        merged = [x for part in loaded for x in part]
        print(f"CheckAccess, 4 concurrent clients over 2 replicas: {summary(merged)} "
              f"({len(merged) / elapsed:,.0f}/s; {outcomes})", flush=True)

        propagation, revoke_calls, late_allows = [], [], 0
        for _ in range(args.revokes):
            grant = terms(patient.identity_id, doc.identity_id, signer_key_id=patient.key_id)
            stubs[0].GrantConsent(grant_request(patient.private_key, grant), metadata=patient.metadata, timeout=15)
            probe = check_request(patient.identity_id, "Observation")
            deadline = time.monotonic() + 5
            while stubs[1].CheckAccess(probe, metadata=asker.metadata, timeout=5).decision != pb.DECISION_ALLOW:
                assert time.monotonic() < deadline, "grant never reached replica b"
            seen: list[tuple[float, float, int]] = []
            stop = threading.Event()
            poller = threading.Thread(target=poll, args=(stubs[1], asker.metadata, probe, seen, stop))
            poller.start()
            time.sleep(0.05)
            sent = time.monotonic()
            stubs[0].RevokeConsent(pb.RevokeConsentRequest(consent_id=grant.consent_id), metadata=patient.metadata, timeout=15)
            returned = time.monotonic()
            time.sleep(0.1)
            stop.set()
            poller.join()
            first_deny = min(answered for s, answered, d in seen if d == pb.DECISION_DENY and answered >= sent)
            propagation.append((first_deny - sent) * 1000)
            revoke_calls.append((returned - sent) * 1000)
            late_allows += sum(1 for s, _, d in seen if s >= returned and d == pb.DECISION_ALLOW)
        print(f"revoke on replica a -> first DENY on replica b, {len(propagation)} revocations: {summary(propagation)} "
              f"(target <= 1000 ms)", flush=True)
        print(f"RevokeConsent call (publish acks=all + local apply + staleness wait): {summary(revoke_calls)}; "
              f"ALLOWs from replica b after RevokeConsent returned: {late_allows}", flush=True)
        for channel in channels:
            channel.close()
        harness.close()
    finally:
        await tear_down(processes, list(dbs.values()), topics)
        print(f"# finished in {time.monotonic() - started:.0f}s; logs in {tmp}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
