"""The ledger's PostgreSQL adapter: the log, its hash tiles, the consumed
offsets, checkpoints and rejections. Each write of one batch happens in one
transaction on the connection that holds the sequencer lock, so a sequencer
that lost its lock (its connection died) can no longer write anything."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Collection, Sequence, TypeAlias

import asyncpg

from medledger.ledger import merkle, tile_tree
from medledger.ledger.intake import BatchPlan, LogState
from medledger.ledger.tile_tree import FULL_TILE_BYTES, Tile, TileId

# A plain connection or one lent by a pool; both offer the same query methods.
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"


# A node the tree must hold is absent: the database is damaged.
MissingNodeError = tile_tree.MissingHashes


class TileRewriteError(RuntimeError):
    """A batch would change a full tile or shorten a partial one: the sequencer's
    state and the database disagree, so the batch must not commit."""


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


async def fetch_tiles(conn: Conn, ids: Collection[TileId]) -> dict[TileId, bytes]:
    """The stored hashes of these tiles, in one round trip; absent tiles are left out."""
    if not ids:
        return {}
    rows = await conn.fetch(
        "SELECT t.level, t.idx, t.hashes FROM tree_tiles t"
        " JOIN unnest($1::smallint[], $2::bigint[]) AS want(level, idx)"
        " ON t.level = want.level AND t.idx = want.idx",
        [level for level, _ in ids],
        [index for _, index in ids],
    )
    return {(r["level"], r["idx"]): r["hashes"] for r in rows}


async def tile_hashes(conn: Conn, level: int, index: int) -> bytes | None:
    """One stored tile, as /tile/<level>/<index> serves it (a prefix if partial)."""
    value = await conn.fetchval("SELECT hashes FROM tree_tiles WHERE level = $1 AND idx = $2", level, index)
    return None if value is None else bytes(value)


async def newest_tiles(conn: Conn, leaf_tiles: int) -> list[tuple[TileId, bytes]]:
    """Every tile above level 0 and the newest ``leaf_tiles`` level-0 tiles (newest first)."""
    rows = await conn.fetch(
        "(SELECT level, idx, hashes FROM tree_tiles WHERE level > 0)"
        " UNION ALL (SELECT level, idx, hashes FROM tree_tiles WHERE level = 0 ORDER BY idx DESC LIMIT $1)",
        leaf_tiles,
    )
    return [((r["level"], r["idx"]), bytes(r["hashes"])) for r in rows]


async def fetch_nodes(conn: Conn, ids: Sequence[merkle.NodeId]) -> list[bytes]:
    """Hashes of perfect nodes, in the order asked, computed from their tiles."""
    stored = await fetch_tiles(conn, tile_tree.tiles_needed(ids))
    return tile_tree.node_hashes(ids, {tile: Tile(row) for tile, row in stored.items()})


async def load_state(conn: Conn) -> LogState:
    """Rebuild the sequencer's state from what is committed: the frontier and
    the right-edge tiles come from one read of the tiles they live in."""
    size = await tree_size(conn)
    frontier_ids = merkle.frontier_ids(size)
    edge = tile_tree.edge_tiles(size)
    stored = await fetch_tiles(conn, {*tile_tree.tiles_needed(frontier_ids), *edge})
    frontier = tile_tree.node_hashes(frontier_ids, {tile: Tile(row) for tile, row in stored.items()})
    chain = merkle.GENESIS_CHAIN
    if size:
        chain = await conn.fetchval("SELECT chain_hash FROM entries WHERE idx = $1", size - 1)
    rows = await conn.fetch("SELECT topic, partition, next_offset FROM consumer_offsets")
    offsets = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
    tiles = tile_tree.TileEdge.from_stored(size, stored)
    return LogState(merkle.CompactRange.from_nodes(size, frontier), chain, offsets, tiles)


async def known_event_ids(conn: Conn, event_ids: Sequence[str]) -> dict[str, bytes]:
    """Which of these event ids the log holds already, with their leaf hashes."""
    if not event_ids:
        return {}
    rows = await conn.fetch("SELECT event_id, leaf_hash FROM entries WHERE event_id = ANY($1::text[])", event_ids)
    return {r["event_id"]: r["leaf_hash"] for r in rows}


async def commit_batch(conn: Conn, plan: BatchPlan, at: datetime, checkpoint: StoredCheckpoint | None = None) -> None:
    """Entries, tiles, rejections and offsets of one batch, and the checkpoint
    signed over it when one is due, all or nothing."""
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
        if plan.tiles:
            await _write_tiles(conn, plan.tiles)
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
        if checkpoint:
            await insert_checkpoint(conn, checkpoint)


async def _write_tiles(conn: Conn, tiles: dict[TileId, bytes]) -> None:
    """Insert new tiles and extend partial ones. The database itself refuses to
    change a full tile or to rewrite a partial one other than by extending it."""
    keys = list(tiles)
    written = await conn.fetch(
        "INSERT INTO tree_tiles AS t (level, idx, hashes)"
        " SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::bytea[])"
        " ON CONFLICT (level, idx) DO UPDATE SET hashes = EXCLUDED.hashes"
        " WHERE length(t.hashes) < $4 AND length(EXCLUDED.hashes) > length(t.hashes)"
        " AND substring(EXCLUDED.hashes FROM 1 FOR length(t.hashes)) = t.hashes"
        " RETURNING t.level",
        [level for level, _ in keys],
        [index for _, index in keys],
        [tiles[k] for k in keys],
        FULL_TILE_BYTES,
    )
    if len(written) != len(keys):
        raise TileRewriteError(f"{len(keys) - len(written)} of {len(keys)} tiles would not extend what is stored")


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


async def entry_with_latest_checkpoint(
    conn: Conn, event_id: str
) -> tuple[tuple[Any, ...] | None, StoredCheckpoint] | None:
    """The entry_page row of the entry carrying this event id (None if none)
    and the newest checkpoint, read in one statement, so from one snapshot
    (GetProofBundle); None before any checkpoint is stored."""
    row = await conn.fetchrow(
        "SELECT c.tree_size, c.root_hash, c.chain_hash, c.note, c.signed_at,"
        " e.idx, e.event_id, e.leaf_hash, e.chain_hash AS entry_chain_hash, e.event, e.sequenced_at"
        " FROM (SELECT * FROM checkpoints ORDER BY tree_size DESC LIMIT 1) c"
        " LEFT JOIN entries e ON e.event_id = $1",
        event_id,
    )
    if row is None:
        return None
    entry = None if row["idx"] is None else (
        row["idx"], row["event_id"], row["leaf_hash"], row["entry_chain_hash"], row["event"], row["sequenced_at"]
    )
    return entry, _checkpoint(row)


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
