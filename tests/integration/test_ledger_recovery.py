"""Exactly once through crashes and failover, against the real broker and database."""

from __future__ import annotations

import asyncio
import random
from typing import Callable

import asyncpg

from medledger.ledger import merkle
from medledger.runtime.settings import Topics
from medledger.v1 import events_pb2, ledger_pb2
from medledger.testing.ledger import audit, consume_all, produce, sample_events, stub, wait_for_checkpoint
from medledger.testing.stack import ServiceProcess

Metadata = tuple[tuple[str, str], ...]


async def _entry_count(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM entries"))
    finally:
        await conn.close()


async def test_sigkill_mid_stream_loses_and_repeats_nothing(
    spawn: Callable[..., ServiceProcess], topics: Topics, service_env: dict[str, str], auditor_metadata: Metadata
) -> None:
    total = 10_000
    events = sample_events(total, topics)
    db = service_env["MEDLEDGER_LEDGER_DATABASE_URL"]
    # small transactions and a paced producer, so the kill lands inside the stream
    first = spawn("ledger", MEDLEDGER_LEDGER_BATCH_MAX_RECORDS="300").wait_serving()

    async def paced() -> None:
        for start in range(0, total, 250):
            await produce(events[start : start + 250])
            await asyncio.sleep(0.02)

    producing = asyncio.create_task(paced())
    # kill the sequencer while it is in the middle of the stream
    for _ in range(600):
        if await _entry_count(db) >= 2_000:
            break
        await asyncio.sleep(0.05)
    first.kill()
    killed_at = await _entry_count(db)
    await producing
    assert 0 < killed_at < total, f"the kill should land mid-stream, it landed at {killed_at}"
    # a producer retry after the crash redelivers some events: still exactly once
    await produce(random.Random(7).sample(events, 300))
    second = spawn("ledger", MEDLEDGER_LEDGER_BATCH_MAX_RECORDS="300").wait_serving()
    channel, ledger = stub(second.address)
    with channel:
        cp = wait_for_checkpoint(ledger, total, timeout=180)
        assert cp.tree_size == total
        entries = audit(ledger, cp, auditor_metadata)  # gap-free indices, chain, root == signed checkpoint
        assert sorted(e.event_id for e in entries) == sorted(e.event_id for _, e in events)
        rng = random.Random(11)
        for index in rng.sample(range(total), 20):
            size = rng.randint(index + 1, total)
            proof = ledger.GetInclusionProof(ledger_pb2.GetInclusionProofRequest(index=index, tree_size=size))
            merkle.verify_inclusion(entries[index].leaf_hash, index, size, list(proof.hashes), proof.root_hash)
            root = ledger.GetInclusionProof(ledger_pb2.GetInclusionProofRequest(index=0, tree_size=size)).root_hash
            cons = ledger.GetConsistencyProof(ledger_pb2.GetConsistencyProofRequest(first_size=size, second_size=total))
            merkle.verify_consistency(size, total, list(cons.hashes), root, cp.root_hash)
    # followers resumed where they stopped: each index published exactly once
    published = await consume_all(topics.ledger_entries, total, timeout=120)
    indices = [events_pb2.LedgerEntry.FromString(r.value).index for r in published]
    assert indices == list(range(total))


async def test_standby_waits_then_takes_over(
    spawn: Callable[..., ServiceProcess],
    topics: Topics,
    free_port_factory: Callable[[], int],
    auditor_metadata: Metadata,
) -> None:
    active = spawn("ledger").wait_serving()
    standby = spawn("ledger", MEDLEDGER_LEDGER_PORT=str(free_port_factory())).wait_serving()
    events = sample_events(400, topics)
    await produce(events[:200])
    channel, ledger = stub(standby.address)  # a standby serves reads too
    with channel:
        wait_for_checkpoint(ledger, 200)
        assert "acquired the sequencer lock" in active.log_tail(200)
        assert "acquired the sequencer lock" not in standby.log_tail(200)
        active.kill()
        await produce(events[200:])
        cp = wait_for_checkpoint(ledger, 400, timeout=60)
        assert "acquired the sequencer lock" in standby.log_tail(200)
        entries = audit(ledger, cp, auditor_metadata)
    assert sorted(e.event_id for e in entries) == sorted(e.event_id for _, e in events)
