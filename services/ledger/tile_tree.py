"""The Merkle tree stored as C2SP tlog-tiles hash tiles, with no I/O.

Only the hashes at tree levels 0, 8, 16, … are stored: tile ``(L, N)`` holds the
hashes at level ``8·L`` with indices ``[256·N, 256·N + width)`` (the entries' leaf
hashes for L = 0), exactly the bytes ``/tile/<L>/<N>`` serves. Every other perfect
node at level ``8·L + k`` (k < 8) is the root of ``2**k`` consecutive hashes of one
tile, recomputed on demand (at most 255 hashes per tile). A tile only ever grows at
its end, so any stored prefix of it stays valid forever; a full tile (256 hashes)
never changes. The sequencer extends the right-edge tiles (``TileEdge``); proofs
read nodes out of tiles (``tiles_needed``, ``node_hashes``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import sha256

from medledger.ledger.merkle import HASH_SIZE, Hash, NodeId
from medledger.ledger.tlog_tiles import TILE_HEIGHT, TILE_WIDTH

TileId = tuple[int, int]
"""(tile level L, tile index N): the hashes at tree level 8·L, indices [256·N, 256·N + 256)."""

FULL_TILE_BYTES = TILE_WIDTH * HASH_SIZE


class MissingHashes(RuntimeError):
    """A node whose tile is absent or too short: the database is damaged (or behind)."""

    def __init__(self, missing: Sequence[NodeId]) -> None:
        super().__init__(f"tree nodes missing from the ledger's tiles: {list(missing)[:5]}")
        self.missing = list(missing)


def locate(node: NodeId) -> tuple[TileId, int, int]:
    """(tile, first position, count): node is the root of those ``count`` stored hashes."""
    level, index = node
    tile_level, k = divmod(level, TILE_HEIGHT)
    first = index << k
    return (tile_level, first >> TILE_HEIGHT), first & (TILE_WIDTH - 1), 1 << k


def tiles_needed(ids: Iterable[NodeId]) -> dict[TileId, int]:
    """Every tile these nodes are computed from, with the width each must have at least."""
    need: dict[TileId, int] = {}
    for node in ids:
        tile, first, count = locate(node)
        need[tile] = max(need.get(tile, 0), first + count)
    return need


def _pairs(level: bytes) -> bytes:
    """The next level up of a row of concatenated hashes (an odd last hash has no parent yet)."""
    return b"".join(
        sha256(b"\x01" + level[at : at + 2 * HASH_SIZE]).digest()
        for at in range(0, len(level) - 2 * HASH_SIZE + 1, 2 * HASH_SIZE)
    )


class Tile:
    """One stored tile's hashes. Its inner nodes (the 7 levels above the stored
    row) are computed once, on first use, and kept: twice the memory of the row
    for O(1) nodes afterwards, where computing one proof's nodes of a full tile
    would cost 247 SHA-256 every time."""

    __slots__ = ("row", "_levels")

    def __init__(self, row: bytes) -> None:
        self.row = row
        self._levels: list[bytes] | None = None

    @property
    def width(self) -> int:
        return len(self.row) // HASH_SIZE

    def expand(self) -> None:
        """Compute the inner nodes now (a no-op once done)."""
        if self._levels is None:
            levels = [self.row]
            for _ in range(TILE_HEIGHT - 1):
                levels.append(_pairs(levels[-1]))
            self._levels = levels

    def node(self, first: int, count: int) -> Hash:
        """Root of the ``count`` (a power of two) hashes from position ``first``."""
        self.expand()
        assert self._levels is not None
        k = count.bit_length() - 1
        at = (first >> k) * HASH_SIZE
        return self._levels[k][at : at + HASH_SIZE]


def node_hashes(ids: Sequence[NodeId], tiles: Mapping[TileId, Tile]) -> list[Hash]:
    """The hashes of these perfect nodes, in order, computed from ``tiles``.
    Raises MissingHashes naming every node whose tile is absent or too short."""
    out: list[Hash] = []
    missing: list[NodeId] = []
    for node in ids:
        tile_id, first, count = locate(node)
        tile = tiles.get(tile_id)
        if tile is None or tile.width < first + count:
            missing.append(node)
            continue
        out.append(tile.node(first, count))
    if missing:
        raise MissingHashes(missing)
    return out


def edge_tiles(size: int) -> dict[TileId, int]:
    """The partial right-edge tile of each level of a tree of ``size`` leaves, with its width."""
    edge: dict[TileId, int] = {}
    level = 0
    while size >> (TILE_HEIGHT * level):
        count = size >> (TILE_HEIGHT * level)
        if count % TILE_WIDTH:
            edge[(level, count // TILE_WIDTH)] = count % TILE_WIDTH
        level += 1
    return edge


@dataclass
class TileEdge:
    """The sequencer's right-edge tiles: what new hashes extend. ``rows`` maps a
    tile level to its partial tile (index, hashes so far); ``changed`` collects
    every tile a batch wrote, whole, until ``take``."""

    rows: dict[int, tuple[int, bytearray]] = field(default_factory=dict)
    changed: dict[TileId, bytes] = field(default_factory=dict)

    @classmethod
    def from_stored(cls, size: int, stored: Mapping[TileId, bytes]) -> TileEdge:
        """Resume from the stored partial tiles of a tree of ``size`` leaves.
        Raises MissingHashes if one is absent or shorter than ``size`` implies."""
        rows: dict[int, tuple[int, bytearray]] = {}
        for (level, index), width in edge_tiles(size).items():
            row = stored.get((level, index), b"")
            if len(row) < width * HASH_SIZE:
                raise MissingHashes([(TILE_HEIGHT * level, index * TILE_WIDTH + len(row) // HASH_SIZE)])
            rows[level] = (index, bytearray(row[: width * HASH_SIZE]))
        return cls(rows)

    def add(self, node: NodeId, value: Hash) -> None:
        """Store a completed node; only levels 0, 8, 16, … are kept, others are ignored."""
        level, index = node
        tile_level, k = divmod(level, TILE_HEIGHT)
        if k:
            return
        tile_index, position = divmod(index, TILE_WIDTH)
        if position == 0:
            row = bytearray()
            self.rows[tile_level] = (tile_index, row)
        else:
            current = self.rows.get(tile_level)
            if current is None or current[0] != tile_index or len(current[1]) != position * HASH_SIZE:
                raise ValueError(f"node {node} does not extend the right-edge tile of level {tile_level}")
            row = current[1]
        row += value
        if position == TILE_WIDTH - 1:  # full: written once, never again
            self.changed[(tile_level, tile_index)] = bytes(row)
            del self.rows[tile_level]
        else:
            self.changed[(tile_level, tile_index)] = b""  # a placeholder until take()

    def take(self) -> dict[TileId, bytes]:
        """The tiles changed since the last take, each with its whole current content."""
        out = {
            tile: content or bytes(self.rows[tile[0]][1])
            for tile, content in self.changed.items()
        }
        self.changed = {}
        return out
