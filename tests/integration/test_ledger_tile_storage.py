"""The ledger's tree stored as hash tiles in PostgreSQL: an existing ledger
(per-node rows) migrates to tiles, full tiles cannot be rewritten, and proofs
come from memory once the tiles are there."""

from __future__ import annotations

import random
import shutil
from datetime import datetime, timezone
from hashlib import sha256
from pathlib import Path

import asyncpg
import pytest

from medledger.ledger import merkle, proofs, store
from medledger.ledger.app import LedgerApp
from medledger.ledger.intake import BatchPlan, NewEntry, SourceRecord
from medledger.ledger.tile_cache import TileCache
from medledger.ledger.tile_tree import TileEdge, TileId
from medledger.runtime.postgres import apply_migrations, connect

# A full level-1 tile and partial tiles at levels 0, 1 and 2.
SIZE = (1 << 16) + 256 * 40 + 77


def _grow(size: int) -> tuple[list[bytes], dict[merkle.NodeId, bytes], dict[TileId, bytes], bytes]:
    tree, edge = merkle.CompactRange.empty(), TileEdge()
    leaves = [sha256(b"event %d" % i).digest() for i in range(size)]
    nodes: dict[merkle.NodeId, bytes] = {}
    for leaf in leaves:
        for node_id, node in tree.append(leaf):
            nodes[node_id] = node
            edge.add(node_id, node)
    return leaves, nodes, edge.take(), tree.root()


async def _old_ledger(url: str, tmp_path: Path, size: int) -> tuple[list[bytes], dict[TileId, bytes], bytes]:
    """A database as the ledger left it before tiles: migration 0001, one row per node."""
    old = tmp_path / "migrations"
    old.mkdir()
    shutil.copy(LedgerApp.migrations / "0001_ledger.sql", old)
    leaves, nodes, tiles, root = _grow(size)
    conn = await connect(url)
    try:
        await apply_migrations(conn, old)
        at = datetime.now(timezone.utc)
        await conn.copy_records_to_table(
            "entries",
            columns=["idx", "event_id", "leaf_hash", "chain_hash", "event", "source_topic", "source_partition",
                     "source_offset", "sequenced_at"],
            records=[(i, f"e{i}", leaf, bytes(32), b"event %d" % i, "t", 0, i, at) for i, leaf in enumerate(leaves)],
        )
        await conn.copy_records_to_table(
            "tree_nodes", columns=["level", "idx", "hash"],
            records=[(level, idx, h) for (level, idx), h in nodes.items() if level > 0],
        )
    finally:
        await conn.close()
    return leaves, tiles, root


async def test_an_existing_ledger_migrates_to_tiles_and_keeps_its_tree(database_url: str, tmp_path: Path) -> None:
    leaves, tiles, root = await _old_ledger(database_url, tmp_path, SIZE)
    conn = await connect(database_url)
    try:
        assert await apply_migrations(conn, LedgerApp.migrations) == [2]
        stored = {(r["level"], r["idx"]): bytes(r["hashes"]) for r in await conn.fetch("SELECT * FROM tree_tiles")}
        assert stored == tiles  # exactly the tiles the sequencer would have written
        assert await conn.fetchval("SELECT to_regclass('tree_nodes')") is None
        state = await store.load_state(conn)
        assert (state.size, state.tree.root()) == (SIZE, root)
        # the sequencer resumes on the stored right edge
        assert {level: (index, bytes(row)) for level, (index, row) in state.tiles.rows.items()} == {
            0: (SIZE // 256, tiles[(0, SIZE // 256)]), 1: (1, tiles[(1, 1)]), 2: (0, tiles[(2, 0)])
        }
    finally:
        await conn.close()


async def test_a_full_tile_is_never_rewritten_and_the_batch_does_not_commit(database_url: str, tmp_path: Path) -> None:
    _, tiles, _ = await _old_ledger(database_url, tmp_path, 600)
    conn = await connect(database_url)
    try:
        await apply_migrations(conn, LedgerApp.migrations)
        forged = bytes(32) + tiles[(0, 0)][32:]
        for changed in ({(0, 0): forged}, {(0, 2): bytes(32) * 89}, {(0, 2): tiles[(0, 2)][:64]}):
            entry = NewEntry(600, "e600", sha256(b"x").digest(), bytes(32), b"x", SourceRecord("t", 0, 600, b"x"))
            plan = BatchPlan(entries=[entry], tiles=changed, offsets={("t", 0): 601})
            with pytest.raises(store.TileRewriteError):
                await store.commit_batch(conn, plan, datetime.now(timezone.utc))
        stored = {(r["level"], r["idx"]): bytes(r["hashes"]) for r in await conn.fetch("SELECT * FROM tree_tiles")}
        assert stored == tiles
        # nothing of those batches committed
        assert (await store.tree_size(conn), await conn.fetchval("SELECT count(*) FROM consumer_offsets")) == (600, 0)
        extended = {(0, 2): tiles[(0, 2)] + sha256(b"next").digest()}
        await store.commit_batch(conn, BatchPlan(tiles=extended), datetime.now(timezone.utc))
        assert await store.tile_hashes(conn, 0, 2) == extended[(0, 2)]
    finally:
        await conn.close()


async def test_proofs_come_from_memory_once_the_tiles_are_there(database_url: str, tmp_path: Path) -> None:
    leaves, _, root = await _old_ledger(database_url, tmp_path, SIZE)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn, LedgerApp.migrations)
        cache = TileCache(lambda: pool, leaf_tiles=1024)
        await cache.warm()
        rng = random.Random(3)
        for index in [0, SIZE - 1, *(rng.randrange(SIZE) for _ in range(50))]:
            proof = await proofs.inclusion(cache, index, SIZE)
            merkle.verify_inclusion(leaves[index], index, SIZE, proof.hashes, root)
        for first in [1, 256, 65536, *(rng.randrange(1, SIZE) for _ in range(50))]:
            proof = await proofs.consistency(cache, first, SIZE)
            merkle.verify_consistency(first, SIZE, proof.hashes, proof.roots[0], root)
        assert cache.misses == 0  # every tile was in memory: no database round trip

        small = TileCache(lambda: pool, leaf_tiles=2)  # bounded: older leaf tiles are read when asked
        proof = await proofs.inclusion(small, 5, SIZE)
        merkle.verify_inclusion(leaves[5], 5, SIZE, proof.hashes, root)
        assert small.misses > 0 and len(small._leaves) <= 2
    finally:
        await pool.close()
