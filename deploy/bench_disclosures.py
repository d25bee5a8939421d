"""ListDisclosures' index on the real PostgreSQL (issue 11: the records
service's per-patient accounting of disclosures).

A scratch records database (records' migrations) is filled with signed
RecordsDisclosed and AccessDecided envelopes through the index's own
``apply_batch`` (the rate is the index consumer's database cost per event),
then padded with COPY to ``--rows`` index rows over ``--patients`` patients,
every one with a ledger index, one patient holding ``--target`` lines. Then
``DisclosureReads.list`` (the rpc's code, in-process, no gRPC) pages through
that patient's whole accounting, 1,000 lines per page, ``--repeat`` times.

Usage: python deploy/bench_disclosures.py [--rows N] [--patients P] [--target A] [--repeat R]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg

import medledger.records as records_package
from medledger.records.disclosure_index import index_row
from medledger.records.disclosures import DisclosureReads, apply_batch
from medledger.runtime.auth import Caller
from medledger.runtime.envelope import envelope, new_event_id
from medledger.runtime.postgres import drop_database, prepare_database
from medledger.testing.latency import pct
from medledger.testing.stack import PG_SERVER_URL, PRODUCERS
from medledger.v1 import consent_pb2, events_pb2, records_pb2

T0 = datetime.now(timezone.utc) - timedelta(days=30)


def signed_events(count: int, patients: list[str], target: str, target_count: int) -> list[bytes]:
    """Alternating decisions and disclosures; the first target_count about target."""
    consent, records = PRODUCERS.signers["consent"], PRODUCERS.signers["records"]
    out = []
    for i in range(count):
        patient = target if i < target_count else patients[i % len(patients)]
        at = T0 + timedelta(milliseconds=i)
        if i % 2:
            d = consent_pb2.AccessDecided(requester_id=f"doc-{i % 500}", patient_id=patient, category="Observation",
                                          decision=consent_pb2.DECISION_ALLOW, purpose=consent_pb2.PURPOSE_TREATMENT)
            out.append(consent.seal(envelope(d, aggregate_id=patient, producer="consent", occurred_at=at)))
        else:
            r = records_pb2.RecordsDisclosed(
                disclosure_id=new_event_id(), requester_id=f"doc-{i % 500}", patient_id=patient,
                basis=records_pb2.DISCLOSURE_BASIS_CONSENT, operation="GetRecord",
                records=[records_pb2.DisclosedRecord(record_id=str(uuid.uuid4()), version=1, category="Observation",
                                                     commitment=bytes(32))])
            out.append(records.seal(envelope(r, aggregate_id=patient, producer="records", occurred_at=at)))
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--target", type=int, default=1_000)
    parser.add_argument("--applied", type=int, default=50_000, help="events written through apply_batch")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    url = f"{PG_SERVER_URL}/bench_disclosures_{uuid.uuid4().hex[:8]}"
    await prepare_database(url, Path(records_package.__file__).parent / "migrations")
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    assert pool is not None
    try:
        patients = [str(uuid.uuid4()) for _ in range(args.patients)]
        target = str(uuid.uuid4())
        values = signed_events(args.applied, patients, target, args.target)
        rows = [index_row(events_pb2.EventEnvelope.FromString(v), v) for v in values]
        started = time.perf_counter()
        for i in range(0, len(rows), 5000):
            batch = [r for r in rows[i:i + 5000] if r is not None]
            async with pool.acquire() as conn, conn.transaction():
                await apply_batch(conn, batch, [(r.event_id, i + n) for n, r in enumerate(batch)], {})
        applied_s = time.perf_counter() - started
        print(f"index apply_batch: {len(rows):,} events in {applied_s:.2f}s = {len(rows) / applied_s:,.0f} events/s")

        filler = args.rows - len(rows)
        template = values[1]  # the bytes do not matter for the query's cost, only their size
        async with pool.acquire() as conn:
            await conn.copy_records_to_table("disclosure_index", records=(
                (f"fill-{i}", patients[i % len(patients)], "medledger.v1.AccessDecided", T0 + timedelta(seconds=i), "",
                 template) for i in range(filler)))
            await conn.copy_records_to_table("disclosure_ledger_indices", records=(
                (f"fill-{i}", len(rows) + i) for i in range(filler)))
            await conn.execute("ANALYZE")
        print(f"index holds {args.rows:,} rows over {args.patients + 1:,} patients; {args.target:,} for one patient")

        reads = DisclosureReads(lambda: pool)
        caller = Caller(target, "PATIENT")
        timings = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            request = records_pb2.ListDisclosuresRequest(patient_id=target, page_size=1000)
            lines = 0
            while True:
                page = await reads.list(caller, request)
                lines += len(page.entries)
                if not page.next_page_token:
                    break
                request.page_token = page.next_page_token
            timings.append(time.perf_counter() - started)
            assert lines == args.target, lines
        p99 = pct(timings, .99)
        print(f"ListDisclosures for the patient with {args.target:,} lines ({args.repeat} runs, in-process, "
              f"pages of 1,000): median {statistics.median(timings) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
        print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))
    finally:
        await pool.close()
        await drop_database(url)


if __name__ == "__main__":
    asyncio.run(main())
