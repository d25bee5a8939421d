"""Hash tiles kept in memory, so proofs are served without a database round trip.

A stored tile only ever grows at its end and a full one never changes
(tile_tree.py), so any copy of a tile is right forever for every node it is
wide enough for: there is nothing to invalidate. A proof whose tiles are all
cached (wide enough) is computed from memory; otherwise the missing or too
short tiles are read in one query and kept. The leader also puts every tile
it commits here, so its cache follows the log; a standby's follows the
proofs asked of it, after a start-up warm-up of the newest tiles.

Memory is bounded: tiles above level 0 (1/256 of the hashes: about 64 bytes
per 256 entries with their inner nodes) are all kept; level-0 tiles (8 KiB per
256 entries, 16 KiB once a proof or the warm-up computed their inner nodes) are
kept up to ``leaf_tiles`` of them, least recently used out first.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence

import asyncpg

from medledger.ledger import merkle, store, tile_tree
from medledger.ledger.tile_tree import Tile, TileId

log = logging.getLogger(__name__)


class TileCache:
    """The proofs' NodeSource (proofs.py) over the ledger's pool."""

    def __init__(self, pool: Callable[[], asyncpg.Pool], leaf_tiles: int) -> None:
        self._pool = pool
        self._upper: dict[TileId, Tile] = {}
        self._leaves: OrderedDict[TileId, Tile] = OrderedDict()
        self.leaf_tiles = max(0, leaf_tiles)
        self.misses = 0  # tile reads that went to the database (tests, benchmarks)
        # Tiles whose inner nodes are still to be computed, off the proofs' path.
        self._unexpanded: deque[Tile] = deque()
        self._more = asyncio.Event()

    def _get(self, tile: TileId) -> Tile | None:
        if tile[0]:
            return self._upper.get(tile)
        found = self._leaves.get(tile)
        if found is not None:
            self._leaves.move_to_end(tile)
        return found

    def put(self, tile: TileId, row: bytes) -> None:
        """Keep a stored tile (no-op if a wider copy is kept already)."""
        kept = self._upper.get(tile) if tile[0] else self._leaves.get(tile)
        if kept is not None and kept.width * merkle.HASH_SIZE >= len(row):
            return
        kept = Tile(row)
        self._unexpanded.append(kept)
        self._more.set()
        if tile[0]:
            self._upper[tile] = kept
            return
        self._leaves[tile] = kept
        self._leaves.move_to_end(tile)
        while len(self._leaves) > self.leaf_tiles:
            self._leaves.popitem(last=False)

    def put_all(self, tiles: Mapping[TileId, bytes]) -> None:
        """Keep the tiles a batch committed."""
        for tile, row in tiles.items():
            self.put(tile, row)

    async def nodes(self, ids: Sequence[merkle.NodeId]) -> list[bytes]:
        """Hashes of these perfect nodes, from memory where the cached tiles are wide enough."""
        have: dict[TileId, Tile] = {}
        short: list[TileId] = []
        for tile, width in tile_tree.tiles_needed(ids).items():
            found = self._get(tile)
            if found is not None and found.width >= width:
                have[tile] = found
            else:
                short.append(tile)
        if short:
            self.misses += len(short)
            async with self._pool().acquire() as conn:
                stored = await store.fetch_tiles(conn, short)
            for tile, row in stored.items():
                self.put(tile, row)
                have[tile] = self._get(tile) or Tile(row)
        return tile_tree.node_hashes(ids, have)

    async def warm(self) -> None:
        """Load every upper tile and the newest level-0 tiles, up to the bound."""
        try:
            async with self._pool().acquire() as conn:
                stored = await store.newest_tiles(conn, self.leaf_tiles)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # Only a head start: proofs read what they miss anyway.
            log.warning("tile cache warm-up failed", extra={"error": type(exc).__name__})
            return
        for done, (tile, row) in enumerate(reversed(stored)):  # oldest first: the newest end most recently used
            self.put(tile, row)
            if done % 256 == 255:
                await asyncio.sleep(0)

    async def expand(self, stop: asyncio.Event) -> None:
        """Compute the inner nodes of the tiles put here, a few at a time
        (~1.4 ms of hashing), so that proofs find them ready and are served
        between the chunks. About one SHA-256 per entry, once."""
        while not stop.is_set():
            for _ in range(min(8, len(self._unexpanded))):
                self._unexpanded.popleft().expand()
            if self._unexpanded:
                await asyncio.sleep(0)
                continue
            self._more.clear()
            stopping = asyncio.ensure_future(stop.wait())
            more = asyncio.ensure_future(self._more.wait())
            await asyncio.wait({stopping, more}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            more.cancel()
