"""Audit benchmarks against the real Kafka and PostgreSQL at >= 1,000,000
entries (docs/architecture.md, Performance targets; issue 11).

A realistic log is produced first, every event signed by the bench's producer
keys and every person's statement by that person's key: patients and
practitioners registered with their keys, patient-signed consents, author-
signed record attestations, and access decisions, 1,000 of them about one
patient. A fresh ledger sequences it; then, with the auditor's pinned keys:

1. ``medledger audit verify`` with every producer, consent and record
   signature checked (target >= 25,000 entries/s on both cores), and with
   hashes alone (``--hashes-only``, target >= 150,000 entries/s);
2. the same verification also writing the disclosure index (``--index``);
3. ``medledger audit disclosures`` for the patient with 1,000 accesses
   (target <= 1 s), end to end as a command and the query alone;
4. ``medledger audit replay`` of every event topic into scratch databases
   (events/s).

Usage: python deploy/bench_audit.py [--events N] [--patients P] [--target-accesses A]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import Message

from bench_ledger import produce_all  # deploy/ is this script's directory
from medledger.audit import disclosures, index
from medledger.consent.signing import sign_terms
from medledger.identity.domain import key_id_for
from medledger.ledger.note import NoteSigner
from medledger.records.domain import ATTESTATION_PREFIX
from medledger.runtime import signed
from medledger.runtime.envelope import envelope
from medledger.runtime.kafka import delete_topics, ensure_topics, topic_specs
from medledger.runtime.postgres import drop_database
from medledger.runtime.settings import Topics
from medledger.testing.consent import terms
from medledger.testing.identity import IdentityHarness, generate_key, identity_env
from medledger.testing.ledger import stub as ledger_stub
from medledger.testing.ledger import wait_for_checkpoint
from medledger.testing.machine import machine_line
from medledger.testing.stack import BOOTSTRAP, MEDLEDGER, PG_SERVER_URL, PRODUCERS, ServiceProcess, free_port
from medledger.v1 import consent_pb2, identity_pb2, records_pb2
from medledger.consent.domain import timestamp

T0 = datetime.now(timezone.utc) - timedelta(days=30)


def raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def log_events(total: int, patients: int, target_accesses: int) -> tuple[list[tuple[str, str, bytes]], str]:
    """(logical topic, key, signed envelope) in publishing order, and the patient with target_accesses."""
    out: list[tuple[str, str, bytes]] = []

    def add(topic: str, payload: Message, aggregate: str, at: datetime, actor: str = "") -> None:
        producer = "identity" if topic == "identity.events" else "records" if topic == "records.events" else "consent"
        env = envelope(payload, aggregate_id=aggregate, producer=producer, actor=actor, occurred_at=at)
        out.append((topic, aggregate, PRODUCERS.seal(env)))

    doctors = {f"pract-{uuid.uuid4()}": Ed25519PrivateKey.generate() for _ in range(max(10, patients // 40))}
    people = {f"patient-{uuid.uuid4()}": Ed25519PrivateKey.generate() for _ in range(patients)}
    for n, (identity_id, key) in enumerate([*doctors.items(), *people.items()]):
        kind = identity_pb2.PRACTITIONER if identity_id.startswith("pract") else identity_pb2.PATIENT
        add("identity.events", identity_pb2.IdentityRegistered(
            identity_id=identity_id, kind=kind, key_id=key_id_for(raw(key)), public_key=raw(key),
            assurance_level="IAL2", registered_by="org-bench"), identity_id, T0 + timedelta(milliseconds=n))
    doctor_ids = list(doctors)
    for n, (patient, key) in enumerate(people.items()):
        at = T0 + timedelta(days=1, milliseconds=n)
        t = terms(patient, doctor_ids[n % len(doctor_ids)], signer_key_id=key_id_for(raw(key)), signed_at=at,
                  valid_from=at, valid_until=at + timedelta(days=365))
        _, signature = sign_terms(key, t)
        add("consent.events", consent_pb2.ConsentGranted(
            terms=t, signature=signature, grantee_kind=consent_pb2.GRANTEE_KIND_PRACTITIONER,
            signer_role=consent_pb2.SIGNER_ROLE_PATIENT, submitted_by=patient), patient, at, patient)
        author = doctor_ids[n % len(doctor_ids)]
        attestation = records_pb2.RecordAttestation(
            record_id=str(uuid.uuid4()), version=1, patient_id=patient, organization_id="org-bench", author_id=author,
            author_key_id=key_id_for(raw(doctors[author])), category="Observation", commitment=os.urandom(32),
            signed_at=timestamp(at),
        )
        _, author_signature = signed.sign(doctors[author], ATTESTATION_PREFIX, attestation)
        add("records.events", records_pb2.RecordCreated(
            attestation=attestation, author_signature=author_signature, basis=records_pb2.WRITE_BASIS_CONSENT,
            consent_id=t.consent_id), patient, at + timedelta(seconds=1), author)
    patient_ids = list(people)
    target = patient_ids[0]
    remaining = total - len(out)
    spread = max(1, remaining // max(1, target_accesses))
    for i in range(remaining):
        patient = target if i % spread == 0 and i // spread < target_accesses else patient_ids[1 + i % (len(patient_ids) - 1)]
        allow = i % 5 != 0
        add("access.events", consent_pb2.AccessDecided(
            requester_id=doctor_ids[i % len(doctor_ids)], patient_id=patient, purpose=consent_pb2.PURPOSE_TREATMENT,
            category="Observation", decision=consent_pb2.DECISION_ALLOW if allow else consent_pb2.DECISION_DENY,
            reason=consent_pb2.REASON_CONSENT if allow else consent_pb2.REASON_NO_CONSENT, asked_by="records-service",
        ), patient, T0 + timedelta(days=2, microseconds=i * 500), doctor_ids[i % len(doctor_ids)])
    return out, target


def run(args: list[str], env: dict[str, str], line: str = "") -> tuple[int, str, float]:
    """Exit code, the output line starting with ``line`` (the last one by
    default; stderr on failure) and the wall time of one audit command."""
    started = time.perf_counter()
    done = subprocess.run([MEDLEDGER, "audit", *args], capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - started
    if done.returncode:
        return done.returncode, done.stdout + done.stderr, elapsed
    lines = [x for x in done.stdout.strip().splitlines() if x.startswith(line)] or [""]
    return done.returncode, lines[-1], elapsed


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=int(os.environ.get("BENCH_EVENTS", "1000000")))
    parser.add_argument("--patients", type=int, default=20000)
    parser.add_argument("--target-accesses", type=int, default=1000)
    args = parser.parse_args()
    command = "python deploy/bench_audit.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(f"# audit benchmark: {command}", flush=True)
    print(machine_line("Kafka, PostgreSQL, the ledger and the auditor on this machine"), flush=True)
    topics, identity_topics = Topics(f"bench_audit_{uuid.uuid4().hex[:8]}."), Topics(f"bench_audit_id_{uuid.uuid4().hex[:8]}.")
    tmp = Path(tempfile.mkdtemp(prefix="medledger-bench-audit-"))
    signer = NoteSigner.generate("bench.medledger.local/ledger")
    (tmp / "ledger.key").write_text(signer.signer_key + "\n")
    (tmp / "ledger.pub").write_text(signer.verifier_key + "\n")
    dbs = {name: f"{PG_SERVER_URL}/bench_audit_{name}_{uuid.uuid4().hex[:8]}" for name in ("ledger", "identity")}
    port, identity_port = free_port(), free_port()
    env = dict(os.environ, MEDLEDGER_KAFKA_BOOTSTRAP=BOOTSTRAP, MEDLEDGER_TOPIC_PREFIX=topics.prefix,
               MEDLEDGER_LEDGER_DATABASE_URL=dbs["ledger"], MEDLEDGER_LEDGER_PORT=str(port), MEDLEDGER_RUN_DIR=str(tmp),
               MEDLEDGER_LEDGER_SIGNING_KEY_FILE=str(tmp / "ledger.key"), MEDLEDGER_LEDGER_ORIGIN=signer.name,
               MEDLEDGER_LOG_LEVEL="WARNING", MEDLEDGER_IDENTITY_ADDRESS=f"127.0.0.1:{identity_port}",
               MEDLEDGER_IDENTITY_PORT=str(identity_port), MEDLEDGER_IDENTITY_DATABASE_URL=dbs["identity"],
               **PRODUCERS.write(tmp / "producers"))
    await ensure_topics(BOOTSTRAP, topic_specs(topics) + topic_specs(identity_topics))
    processes: list[ServiceProcess] = []
    try:
        t = time.monotonic()
        records, target = log_events(args.events, args.patients, args.target_accesses)
        print(f"generated {len(records):,} signed events ({args.patients:,} patients with signed consents and "
              f"author-signed records, {args.target_accesses} accesses about {target}) in {time.monotonic() - t:.0f}s", flush=True)
        await produce_all([(topics.prefix + topic, value, key.encode()) for topic, key, value in records])
        del records
        ledger = ServiceProcess("ledger", env, port, tmp / "ledger.log").start()
        processes.append(ledger)
        ledger.wait_serving(120)
        operator_key = generate_key()
        id_env = dict(env, MEDLEDGER_TOPIC_PREFIX=identity_topics.prefix, **identity_env(tmp, operator_key))
        identity = ServiceProcess("identity", id_env, identity_port, tmp / "identity.log").start().wait_serving(60)
        processes.append(identity)
        harness = IdentityHarness(identity.address, operator_key, identity, id_env)
        auditor = harness.auditor()
        t = time.monotonic()
        channel, stub = ledger_stub(ledger.address)
        with channel:
            size = int(wait_for_checkpoint(stub, args.events, timeout=3600).tree_size)
        print(f"the ledger sequenced {size:,} entries in {time.monotonic() - t:.0f}s", flush=True)
        keys = ["--verifier-key-file", str(tmp / "ledger.pub"), "--no-progress"]
        base = ["verify", "--ledger", ledger.address, *keys]
        full = [*base, "--producer-keys-file", env["MEDLEDGER_EVENT_PRODUCER_KEYS_FILE"]]
        for attempt in ("first (cold) run", "second run"):
            code, line, _ = run([*full, "--token", harness.login(auditor).token], env)
            print(f"audit verify with every producer, consent and record signature, {attempt}: exit {code}: {line} "
                  "(target >= 25,000 entries/s)", flush=True)
        code, line, _ = run([*base, "--hashes-only", "--token", harness.login(auditor).token], env)
        print(f"audit verify, hashes and checkpoints only: exit {code}: {line} (target >= 150,000 entries/s)", flush=True)
        index_file = tmp / "audit.idx"
        code, line, _ = run([*full, "--index", str(index_file), "--token", harness.login(auditor).token], env)
        print(f"audit verify with every signature, writing the disclosure index: exit {code}: {line} "
              f"(index {index_file.stat().st_size / 2**20:.0f} MB)" if code == 0 else f"index run failed: {line}", flush=True)
        harness.close()
        walls = []
        for _ in range(5):
            code, _, wall = run(["disclosures", "--index", str(index_file), "--patient", target, "--format", "json"], env)
            walls.append(wall)
        started = time.perf_counter()
        info, entries = index.read(index_file, target)
        text = disclosures.render(disclosures.report(target, entries, as_of=info.describe()), "json")
        query = time.perf_counter() - started
        print(f"audit disclosures for a patient with {len(entries):,} accesses in {size:,} entries: command "
              f"{min(walls):.2f}-{max(walls):.2f}s end to end (5 runs, process start included), "
              f"query and JSON report {query * 1000:.0f} ms ({len(text) // 1024} KiB) (target <= 1 s)", flush=True)
        code, line, _ = run(["replay", "--bootstrap", BOOTSTRAP, "--topic-prefix", topics.prefix, "--producer-keys-file",
                             env["MEDLEDGER_EVENT_PRODUCER_KEYS_FILE"], "--scratch-server", f"{PG_SERVER_URL}/postgres",
                             "--no-progress"], env, line="replayed")
        print(f"audit replay of every event topic, identity and consent rebuilt into scratch databases: exit {code}: "
              f"{line}", flush=True)
    finally:
        for proc in processes:
            proc.stop()
        for url in dbs.values():
            await drop_database(url)
        await delete_topics(BOOTSTRAP, topics.all + identity_topics.all)


if __name__ == "__main__":
    asyncio.run(main())
