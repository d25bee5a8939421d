"""Helpers for ledger tests: publishing envelopes, reading the log back and
verifying it the way an auditor would."""

from __future__ import annotations

import asyncio
import time
from typing import Iterable, Sequence, cast

import asyncpg
import grpc
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord
from google.protobuf import any_pb2
from google.protobuf.message import Message

from medledger.audit.verify import LogAuditor
from medledger.ledger import note
from medledger.ledger.api import LedgerApi
from medledger.ledger.settings import LedgerSettings
from medledger.ledger.tile_cache import TileCache
from medledger.ledger.watch import CheckpointFeed
from medledger.runtime.envelope import envelope
from medledger.runtime.kafka import make_consumer, make_producer
from medledger.runtime.settings import Topics
from medledger.v1 import consent_pb2, events_pb2, identity_pb2, ledger_pb2, ledger_pb2_grpc
from medledger.testing.stack import BOOTSTRAP, PRODUCERS


def sample_payload(topic_index: int, i: int) -> tuple[Message, str]:
    """An event of a type allowed on the topic_index-th event topic, and the
    service allowed to produce it (ids only, no PHI)."""
    if topic_index == 0:
        return identity_pb2.MembershipEnded(organization_id=f"org-{i}", member_id=f"member-{i}"), "identity"
    if topic_index == 1:
        return consent_pb2.ConsentRevoked(consent_id=f"consent-{i}", patient_id=f"patient-{i % 97}"), "consent"
    if topic_index == 2:
        # records defines its events later; the policy already names this type
        created = any_pb2.Any(type_url="type.googleapis.com/medledger.v1.RecordCreated", value=i.to_bytes(4, "big"))
        return created, "records"
    return consent_pb2.AccessDecided(requester_id=f"r-{i}", patient_id=f"patient-{i % 97}"), "consent"


def sample_envelope(topic_index: int, i: int, aggregate_id: str, actor: str = "tester") -> events_pb2.EventEnvelope:
    """An unsigned envelope of a type the topic_index-th event topic allows,
    naming the service allowed to produce it."""
    payload, producer = sample_payload(topic_index, i)
    env = envelope(payload, aggregate_id=aggregate_id, producer=producer, actor=actor)
    if isinstance(payload, any_pb2.Any):
        env.event_type = payload.type_url.rsplit("/", 1)[1]
        env.payload.CopyFrom(payload)
    return env


def sample_events(n: int, topics: Topics, start: int = 0) -> list[tuple[str, events_pb2.EventEnvelope]]:
    """n signed envelopes spread over the four event topics, each of a type
    its topic allows and signed by the test key of the service allowed to
    produce it (payloads carry no PHI)."""
    out = []
    for i in range(start, start + n):
        env = sample_envelope(i % 4, i, f"patient-{i % 97}")
        PRODUCERS.signers[env.producer].sign(env)
        out.append((topics.event_topics[i % 4], env))
    return out


async def produce(events: Sequence[tuple[str, events_pb2.EventEnvelope]], producer: AIOKafkaProducer | None = None) -> None:
    own = producer is None
    p = producer or make_producer(BOOTSTRAP, linger_ms=5)
    if own:
        await p.start()
    try:
        futures = [await p.send(t, e.SerializeToString(), key=e.aggregate_id.encode()) for t, e in events]
        await asyncio.gather(*futures)
    finally:
        if own:
            await p.stop()


async def produce_raw(topic: str, values: Iterable[bytes], key: str = "raw") -> None:
    """Publish exact bytes, as anyone with write access to the topic can."""
    p = make_producer(BOOTSTRAP)
    await p.start()
    try:
        for v in values:
            await p.send_and_wait(topic, v, key=key.encode())
    finally:
        await p.stop()


def stub(address: str) -> tuple[grpc.Channel, ledger_pb2_grpc.LedgerServiceStub]:
    channel = grpc.insecure_channel(address)
    return channel, ledger_pb2_grpc.LedgerServiceStub(channel)


def wait_for_checkpoint(ledger: ledger_pb2_grpc.LedgerServiceStub, size: int, timeout: float = 120) -> ledger_pb2.Checkpoint:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = ledger.GetCheckpoint(ledger_pb2.GetCheckpointRequest(), timeout=5)
            if last.tree_size >= size:
                return last
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint of size {size} within {timeout}s (last: {last.tree_size if last else None})")


def read_entries(ledger: ledger_pb2_grpc.LedgerServiceStub, size: int, metadata: Sequence[tuple[str, str]] = ()) -> list[ledger_pb2.Entry]:
    entries: list[ledger_pb2.Entry] = []
    while len(entries) < size:
        batch = list(ledger.GetEntries(ledger_pb2.GetEntriesRequest(start=len(entries), count=size - len(entries)), metadata=metadata))
        assert batch, "GetEntries returned nothing"
        entries += batch
    return entries


def audit(ledger: ledger_pb2_grpc.LedgerServiceStub, checkpoint: ledger_pb2.Checkpoint, metadata: Sequence[tuple[str, str]] = ()) -> list[ledger_pb2.Entry]:
    """Replay every entry up to the checkpoint and check it as an auditor does,
    with nothing but the published verifier key."""
    key = ledger.GetVerifierKey(ledger_pb2.GetVerifierKeyRequest())
    auditor = LogAuditor(note.NoteVerifier.from_verifier_key(key.verifier_key), origin=key.origin)
    entries = read_entries(ledger, checkpoint.tree_size, metadata)
    for e in entries:
        auditor.add(e.index, e.event, e.leaf_hash, e.chain_hash)
    auditor.check(checkpoint.checkpoint)
    return entries


async def tamper_stored_hash(conn: "asyncpg.Connection[asyncpg.Record]", level: int, index: int, value: bytes) -> bytes:
    """Overwrite the stored hash of the perfect subtree (level, index), as an
    attacker with write access to the ledger's database could, and return the
    hash it replaced (tamper again with that to restore it). Only levels 0, 8,
    16, … are stored: level 8*L in hash tile L (level 0: the leaf hashes), the
    nodes between are recomputed from them. The one place tests and benchmarks
    know how the ledger stores its tree."""
    if level % 8:
        raise ValueError(f"only levels 0, 8, 16, ... are stored, not {level}")
    tile, position = divmod(index, 256)
    where = (level // 8, tile)
    start = position * 32 + 1
    original = await conn.fetchval(
        "SELECT substring(hashes FROM $3 FOR 32) FROM tree_tiles WHERE level = $1 AND idx = $2", *where, start
    )
    if not original or len(original) != 32:
        raise LookupError(f"no stored hash at level {level}, index {index}")
    await conn.execute(
        "UPDATE tree_tiles SET hashes = overlay(hashes PLACING $3 FROM $4 FOR 32) WHERE level = $1 AND idx = $2",
        *where, value, start,
    )
    return bytes(original)


async def consume_all(topic: str, expected: int, timeout: float = 60) -> list[ConsumerRecord[bytes, bytes]]:
    """At least ``expected`` records of the topic from offset 0 (or what came within timeout)."""
    consumer = make_consumer(BOOTSTRAP, topic, group_id=None, isolation_level="read_uncommitted")
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for recs in batch.values():
                records += recs
        # and whatever else is on the topic already (a caller asserting an exact
        # count sees extras), read to the end offset rather than for a while
        ends = await consumer.end_offsets(list(consumer.assignment()))
        while any([await consumer.position(tp) < end for tp, end in ends.items()]):
            for recs in (await consumer.getmany(timeout_ms=500)).values():
                records += recs
    finally:
        await consumer.stop()
    return records


def pool_only_api(pool: asyncpg.Pool) -> LedgerApi:
    """The ledger's rpcs on a database alone, for handlers that reach no
    settings, checkpoint feed or tile cache (None for each, cast for the
    type checker): a call that does reach one fails loudly."""
    return LedgerApi(cast(LedgerSettings, None), lambda: pool, cast(CheckpointFeed, None), cast(TileCache, None))
