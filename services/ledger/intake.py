"""The sequencer's pure core: which Kafka records become ledger entries, and
what one batch adds to the log. No I/O here.

``plan_batch`` is the ledger's decide step: given the log's state, a batch of
records in consumption order and which of their event ids the log already
holds, it returns the entries, changed hash tiles, rejections and next offsets that
the store then commits in one transaction, plus the state after the commit.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from google.protobuf.message import DecodeError

from medledger.ledger import merkle
from medledger.ledger.tile_tree import TileEdge, TileId
from medledger.runtime.envelope import EnvelopeVerifier
from medledger.runtime.positions import Delivery as SourceRecord
from medledger.v1 import events_pb2

MAX_EVENT_BYTES = 1024 * 1024  # over 1 MiB: rejected, never sequenced (docs/architecture.md, Ledger contract)
MAX_EVENT_ID_CHARS = 200  # longer event ids are rejected, never sequenced

SourcePartition = tuple[str, int]


@dataclass(frozen=True)
class Admitted:
    event_id: str
    leaf_hash: bytes


@dataclass(frozen=True)
class Refused:
    reason: str
    # One of REJECT_KINDS: the reason without its details, for counting.
    kind: str


UNAUTHENTICATED = "unauthenticated producer"
# What a rejection is counted by (the reason may name an event id, so never it).
REJECT_KINDS = (
    "tombstone", "too_large", "not_an_envelope", "no_event_id", "no_event_type", "bad_event_id",
    "unauthenticated_producer", "conflicting_duplicate",
)


def admit(
    record: SourceRecord, verifier: EnvelopeVerifier, max_bytes: int = MAX_EVENT_BYTES
) -> Admitted | Refused:
    """Decide whether a record may be sequenced: a valid EventEnvelope with
    event_id and event_type, at most max_bytes long, signed by a producer
    allowed to publish its type on its topic (docs/architecture.md, Event signing)."""
    return classify([record], verifier, max_bytes)[0]


def _envelope(record: SourceRecord, max_bytes: int) -> events_pb2.EventEnvelope | Refused:
    """The record's envelope if it is well formed and within bounds; its
    signature is not checked here."""
    value = record.value
    if value is None:
        return Refused("record has no value (tombstone)", "tombstone")
    if len(value) > max_bytes:
        return Refused(f"record is {len(value)} bytes, over the {max_bytes}-byte limit", "too_large")
    envelope = events_pb2.EventEnvelope()
    try:
        envelope.ParseFromString(value)
    except DecodeError as exc:
        return Refused(f"not a medledger.v1.EventEnvelope: {exc}", "not_an_envelope")
    if not envelope.event_id:
        return Refused("envelope has no event_id", "no_event_id")
    if not envelope.event_type:
        return Refused("envelope has no event_type", "no_event_type")
    if len(envelope.event_id) > MAX_EVENT_ID_CHARS:
        return Refused(f"event_id longer than {MAX_EVENT_ID_CHARS} characters", "bad_event_id")
    if "\x00" in envelope.event_id:
        return Refused("event_id contains a NUL character", "bad_event_id")
    return envelope


def classify(
    records: Sequence[SourceRecord], verifier: EnvelopeVerifier, max_bytes: int = MAX_EVENT_BYTES
) -> list[Admitted | Refused]:
    """admit() for each record of a batch, in order, with all their signatures
    checked in one batch verification (EnvelopeVerifier.check_batch). CPU-bound;
    the sequencer runs it on worker threads, beside sequencing."""
    parsed = [_envelope(r, max_bytes) for r in records]
    problems = iter(verifier.check_batch(
        [(r.topic, p) for r, p in zip(records, parsed) if not isinstance(p, Refused)]
    ))
    verdicts: list[Admitted | Refused] = []
    for record, envelope in zip(records, parsed):
        if isinstance(envelope, Refused):
            verdicts.append(envelope)
        elif (problem := next(problems)) is not None:
            verdicts.append(Refused(f"{UNAUTHENTICATED}: {problem}", "unauthenticated_producer"))
        else:
            verdicts.append(Admitted(envelope.event_id, merkle.leaf_hash(record.value or b"")))
    return verdicts


@dataclass
class LogState:
    """What the sequencer must know to append: the tree frontier, the chain head
    and the next offset per source partition. Rebuilt from the database."""

    tree: merkle.CompactRange
    chain_head: bytes
    offsets: dict[SourcePartition, int]
    # The right-edge hash tiles the next leaves extend (empty for the empty tree).
    tiles: TileEdge = field(default_factory=TileEdge)

    @property
    def size(self) -> int:
        return self.tree.size


@dataclass(frozen=True)
class NewEntry:
    index: int
    event_id: str
    leaf_hash: bytes
    chain_hash: bytes
    event: bytes
    source: SourceRecord


@dataclass(frozen=True)
class Rejection:
    reason: str
    source: SourceRecord
    value_sha256: bytes
    value_size: int
    kind: str  # one of REJECT_KINDS


@dataclass
class BatchPlan:
    entries: list[NewEntry] = field(default_factory=list)
    tiles: dict[TileId, bytes] = field(default_factory=dict)  # every hash tile changed, whole
    rejections: list[Rejection] = field(default_factory=list)
    duplicates: int = 0
    offsets: dict[SourcePartition, int] = field(default_factory=dict)  # next offset per partition touched


def event_ids(verdicts: Iterable[Admitted | Refused]) -> list[str]:
    """The event ids in a batch, so the caller can ask the store which exist."""
    return [v.event_id for v in verdicts if isinstance(v, Admitted)]


def _rejection(refused: Refused, record: SourceRecord) -> Rejection:
    value = record.value or b""
    return Rejection(refused.reason, record, hashlib.sha256(value).digest(), len(value), refused.kind)


def plan_batch(
    state: LogState,
    records: Sequence[SourceRecord],
    verdicts: Sequence[Admitted | Refused],
    known: Mapping[str, bytes],
) -> BatchPlan:
    """Plan one batch and advance ``state`` in place (callers pass a copy or
    reload on commit failure).

    ``known`` maps event ids already in the log to their leaf hash. A record
    already consumed (offset below the stored next offset) is skipped; a
    repeated event id with the same bytes is a harmless duplicate, and with
    different bytes it is rejected so an operator sees the conflict.
    """
    plan = BatchPlan()
    seen: dict[str, bytes] = dict(known)
    for record, verdict in zip(records, verdicts, strict=True):
        key = (record.topic, record.partition)
        if record.offset < state.offsets.get(key, 0):
            continue  # redelivered after a restart: already applied
        state.offsets[key] = record.offset + 1
        plan.offsets[key] = record.offset + 1
        if isinstance(verdict, Refused):
            plan.rejections.append(_rejection(verdict, record))
            continue
        previous = seen.get(verdict.event_id)
        if previous is not None:
            if previous == verdict.leaf_hash:
                plan.duplicates += 1
            else:
                conflict = Refused(
                    f"event_id {verdict.event_id} already sequenced with different content", "conflicting_duplicate"
                )
                plan.rejections.append(_rejection(conflict, record))
            continue
        assert record.value is not None
        seen[verdict.event_id] = verdict.leaf_hash
        index = state.size
        chain = merkle.chain_hash(state.chain_head, verdict.leaf_hash)
        for node_id, node in state.tree.append(verdict.leaf_hash):
            state.tiles.add(node_id, node)
        state.chain_head = chain
        plan.entries.append(NewEntry(index, verdict.event_id, verdict.leaf_hash, chain, record.value, record))
    plan.tiles = state.tiles.take()
    return plan
