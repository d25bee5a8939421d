"""The ledger's PostgreSQL adapter: the log, its tree nodes, the consumed
offsets, checkpoints and rejections. Each write of one batch happens in one
transaction on the connection that holds the sequencer lock, so a sequencer
that lost its lock (its connection died) can no longer write anything."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Sequence, TypeAlias

import asyncpg

from medledger.ledger import merkle
from medledger.ledger.intake import BatchPlan, LogState

# A plain connection or one lent by a pool; both offer the same query methods.
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"


class MissingNodeError(RuntimeError):
    """A node the tree must hold is absent: the database is damaged."""

    def __init__(self, missing: Sequence[merkle.NodeId]) -> None:
        super().__init__(f"tree nodes missing from the ledger database: {list(missing)[:5]}")
        self.missing = list(missing)


@dataclass(frozen=True)
class StoredEntry:
    index: int
    event_id: str
    leaf_hash: bytes
    chain_hash: bytes
    event: bytes
    sequenced_at: datetime
    source_topic: str = ""
    source_partition: int = 0
    source_offset: int = 0


@dataclass(frozen=True)
class StoredCheckpoint:
    tree_size: int
    root_hash: bytes
    chain_hash: bytes
    note: bytes
    signed_at: datetime


@dataclass(frozen=True)
class StoredRejection:
    id: int
    reason: str
    source_topic: str
    source_partition: int
    source_offset: int
    value_sha256: bytes
    value_size: int
    rejected_at: datetime


_ENTRY_COLUMNS = (
    "idx, event_id, leaf_hash, chain_hash, event, sequenced_at, source_topic, source_partition, source_offset"
)


def _entry(row: asyncpg.Record) -> StoredEntry:
    return StoredEntry(
        row["idx"], row["event_id"], row["leaf_hash"], row["chain_hash"], row["event"], row["sequenced_at"],
        row["source_topic"], row["source_partition"], row["source_offset"],
    )


async def tree_size(conn: Conn) -> int:
    """Number of committed entries (index-only scan of the primary key)."""
    last = await conn.fetchval("SELECT idx FROM entries ORDER BY idx DESC LIMIT 1")
    return 0 if last is None else int(last) + 1


async def fetch_nodes(conn: Conn, ids: Sequence[merkle.NodeId]) -> list[bytes]:
    """Hashes of perfect nodes, in the order asked. Level 0 comes from entries."""
    if not ids:
        return []
    # One round trip: level 0 from entries, higher levels from tree_nodes.
    rows = await conn.fetch(
        "SELECT 0::smallint AS level, idx, leaf_hash AS hash FROM entries"
        " WHERE idx = ANY($1::bigint[])"
        " UNION ALL"
        " SELECT n.level, n.idx, n.hash FROM tree_nodes n"
        " JOIN unnest($2::smallint[], $3::bigint[]) AS want(level, idx)"
        " ON n.level = want.level AND n.idx = want.idx",
        [i for level, i in ids if level == 0],
        [level for level, _ in ids if level > 0],
        [i for level, i in ids if level > 0],
    )
    found: dict[merkle.NodeId, bytes] = {(r["level"], r["idx"]): r["hash"] for r in rows}
    missing = [i for i in ids if i not in found]
    if missing:
        raise MissingNodeError(missing)
    return [found[i] for i in ids]


@dataclass(frozen=True)
class ConnNodes:
    """The proofs' NodeSource over one connection."""

    conn: Conn

    async def nodes(self, ids: Sequence[merkle.NodeId]) -> list[bytes]:
        return await fetch_nodes(self.conn, ids)


async def load_state(conn: Conn) -> LogState:
    """Rebuild the sequencer's state from what is committed."""
    size = await tree_size(conn)
    frontier = await fetch_nodes(conn, merkle.frontier_ids(size))
    chain = merkle.GENESIS_CHAIN
    if size:
        chain = await conn.fetchval("SELECT chain_hash FROM entries WHERE idx = $1", size - 1)
    rows = await conn.fetch("SELECT topic, partition, next_offset FROM consumer_offsets")
    offsets = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
    return LogState(merkle.CompactRange.from_nodes(size, frontier), chain, offsets)


async def known_event_ids(conn: Conn, event_ids: Sequence[str]) -> dict[str, bytes]:
    """Which of these event ids the log holds already, with their leaf hashes."""
    if not event_ids:
        return {}
    rows = await conn.fetch("SELECT event_id, leaf_hash FROM entries WHERE event_id = ANY($1::text[])", event_ids)
    return {r["event_id"]: r["leaf_hash"] for r in rows}


async def commit_batch(conn: Conn, plan: BatchPlan, at: datetime) -> None:
    """Entries, nodes, rejections and offsets of one batch, all or nothing."""
    async with conn.transaction():
        if plan.entries:
            await conn.copy_records_to_table(
                "entries",
                columns=[
                    "idx", "event_id", "leaf_hash", "chain_hash", "event",
                    "source_topic", "source_partition", "source_offset", "sequenced_at",
                ],
                records=[
                    (e.index, e.event_id, e.leaf_hash, e.chain_hash, e.event,
                     e.source.topic, e.source.partition, e.source.offset, at)
                    for e in plan.entries
                ],
            )
        if plan.nodes:
            await conn.copy_records_to_table(
                "tree_nodes",
                columns=["level", "idx", "hash"],
                records=[(level, idx, h) for (level, idx), h in plan.nodes],
            )
        if plan.rejections:
            await conn.executemany(
                "INSERT INTO rejected (reason, source_topic, source_partition, source_offset,"
                " value_sha256, value_size, rejected_at) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                " ON CONFLICT (source_topic, source_partition, source_offset) DO NOTHING",
                [
                    (r.reason, r.source.topic, r.source.partition, r.source.offset, r.value_sha256, r.value_size, at)
                    for r in plan.rejections
                ],
            )
        if plan.offsets:
            keys = list(plan.offsets)
            await conn.execute(
                "INSERT INTO consumer_offsets (topic, partition, next_offset)"
                " SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[])"
                " ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset",
                [t for t, _ in keys],
                [p for _, p in keys],
                [plan.offsets[k] for k in keys],
            )


async def insert_checkpoint(conn: Conn, cp: StoredCheckpoint) -> None:
    await conn.execute(
        "INSERT INTO checkpoints (tree_size, root_hash, chain_hash, note, signed_at) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (tree_size) DO NOTHING",
        cp.tree_size, cp.root_hash, cp.chain_hash, cp.note, cp.signed_at,
    )


def _checkpoint(row: asyncpg.Record) -> StoredCheckpoint:
    return StoredCheckpoint(row["tree_size"], row["root_hash"], row["chain_hash"], row["note"], row["signed_at"])


async def latest_checkpoint(conn: Conn) -> StoredCheckpoint | None:
    row = await conn.fetchrow("SELECT * FROM checkpoints ORDER BY tree_size DESC LIMIT 1")
    return None if row is None else _checkpoint(row)


async def checkpoints_after(conn: Conn, tree_size: int, limit: int = 100) -> list[StoredCheckpoint]:
    rows = await conn.fetch(
        "SELECT * FROM checkpoints WHERE tree_size > $1 ORDER BY tree_size LIMIT $2", tree_size, limit
    )
    return [_checkpoint(r) for r in rows]


async def entries_from(conn: Conn, start: int, limit: int) -> list[StoredEntry]:
    rows = await conn.fetch(
        f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE idx >= $1 ORDER BY idx LIMIT $2", start, limit
    )
    return [_entry(r) for r in rows]


async def entry_page(conn: Conn, start: int, limit: int) -> list[asyncpg.Record]:
    """Rows (idx, event_id, leaf_hash, chain_hash, event, sequenced_at) from start:
    the replay path, kept free of per-row objects because audits read every entry."""
    return await conn.fetch(
        "SELECT idx, event_id, leaf_hash, chain_hash, event, sequenced_at FROM entries"
        " WHERE idx >= $1 ORDER BY idx LIMIT $2",
        start,
        limit,
    )


async def entry_by_event_id(conn: Conn, event_id: str) -> asyncpg.Record | None:
    """The entry_page row of the entry carrying this event id, if any."""
    return await conn.fetchrow(
        "SELECT idx, event_id, leaf_hash, chain_hash, event, sequenced_at FROM entries WHERE event_id = $1", event_id
    )


async def index_of_leaf(conn: Conn, leaf_hash: bytes, below: int) -> int | None:
    """The first index below `below` whose leaf hash is this one."""
    value = await conn.fetchval(
        "SELECT min(idx) FROM entries WHERE leaf_hash = $1 AND idx < $2", leaf_hash, below
    )
    return None if value is None else int(value)


async def rejections_after(conn: Conn, after_id: int, limit: int = 500) -> list[StoredRejection]:
    rows = await conn.fetch("SELECT * FROM rejected WHERE id > $1 ORDER BY id LIMIT $2", after_id, limit)
    return [
        StoredRejection(
            r["id"], r["reason"], r["source_topic"], r["source_partition"], r["source_offset"],
            r["value_sha256"], r["value_size"], r["rejected_at"],
        )
        for r in rows
    ]
