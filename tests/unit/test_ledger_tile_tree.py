"""The tree stored as hash tiles: what a batch writes, and every node and proof
recomputed from tiles, against the node-by-node tree and the RFC 6962 verifier."""

from __future__ import annotations

import asyncio
import random
from hashlib import sha256
from typing import Sequence

import pytest

from medledger.ledger import merkle, proofs
from medledger.ledger.tile_tree import (
    MissingHashes,
    Tile,
    TileEdge,
    TileId,
    edge_tiles,
    node_hashes,
    tiles_needed,
)

# 2**16 + 300 leaves: full and partial tiles at levels 0 and 1, a partial one at level 2.
SIZE = (1 << 16) + 300
LEAVES = [sha256(i.to_bytes(4, "big")).digest() for i in range(SIZE)]


def _grow(batches: Sequence[int]) -> tuple[dict[merkle.NodeId, bytes], dict[TileId, bytes], list[dict[TileId, bytes]]]:
    """Append LEAVES in batches as the sequencer does: every node, the stored tiles, each batch's changes."""
    tree, edge = merkle.CompactRange.empty(), TileEdge()
    nodes: dict[merkle.NodeId, bytes] = {}
    stored: dict[TileId, bytes] = {}
    changes = []
    at = 0
    for count in batches:
        for leaf in LEAVES[at : at + count]:
            for node_id, node in tree.append(leaf):
                nodes[node_id] = node
                edge.add(node_id, node)
        at += count
        changed = edge.take()
        stored.update(changed)
        changes.append(changed)
    return nodes, stored, changes


NODES, STORED, CHANGES = _grow([1, 255, 1, 4000, 10000, 256 * 200 + 7, SIZE - 1 - 255 - 1 - 4000 - 10000 - 256 * 200 - 7])


def test_tiles_hold_the_nodes_at_levels_0_8_16() -> None:
    for (level, index), row in STORED.items():
        width = len(row) // 32
        assert 1 <= width <= 256
        assert [row[32 * i : 32 * i + 32] for i in range(width)] == [
            NODES[(8 * level, 256 * index + i)] for i in range(width)
        ]
    assert set(STORED) == {(0, n) for n in range(SIZE // 256 + 1)} | {(1, 0), (1, 1), (2, 0)}
    assert [len(STORED[t]) // 32 for t in ((0, 256), (0, 257), (1, 0), (1, 1), (2, 0))] == [256, 44, 256, 1, 1]


def test_a_batch_writes_only_the_tiles_it_changed_and_full_tiles_once() -> None:
    assert CHANGES[0] == {(0, 0): LEAVES[0]}
    # leaf 255 fills tile (0, 0), and its root, node (8, 0), starts tile (1, 0)
    assert CHANGES[1] == {(0, 0): b"".join(LEAVES[:256]), (1, 0): NODES[(8, 0)]}
    assert CHANGES[2] == {(0, 1): LEAVES[256]}
    full_writes = [tile for changed in CHANGES for tile, row in changed.items() if len(row) == 8192]
    assert len(full_writes) == len(set(full_writes))


def test_every_node_is_recomputed_from_its_tile() -> None:
    tiles = {tile: Tile(row) for tile, row in STORED.items()}
    rng = random.Random(7)
    ids = [node for node in NODES if node[0] >= 8 or rng.random() < 0.05]
    assert node_hashes(ids, tiles) == [NODES[node] for node in ids]


@pytest.mark.parametrize("size", [1, 2, 255, 256, 257, 511, 512, 4096 + 3, 1 << 16, SIZE])
def test_proofs_from_tiles_verify_with_rfc_9162(size: int) -> None:
    tiles = {tile: Tile(row) for tile, row in STORED.items()}

    class Source:
        async def nodes(self, ids: Sequence[merkle.NodeId]) -> list[bytes]:
            return node_hashes(ids, tiles)

    root = merkle.root_from([NODES[i] for i in merkle.frontier_ids(size)])
    rng = random.Random(size)
    for index in {0, size - 1, *(rng.randrange(size) for _ in range(20))}:
        proof = asyncio.run(proofs.inclusion(Source(), index, size))
        assert proof.roots == (root,)
        merkle.verify_inclusion(LEAVES[index], index, size, proof.hashes, root)
    for first in {1, size, *(rng.randrange(1, size + 1) for _ in range(20))}:
        proof = asyncio.run(proofs.consistency(Source(), first, size))
        merkle.verify_consistency(first, size, proof.hashes, proof.roots[0], root)


def test_a_stored_prefix_is_valid_for_every_smaller_tree() -> None:
    # the tiles of a bigger tree serve every node of a smaller one (prefix-stable)
    small = 1000
    nodes, stored, _ = _grow([small])
    for tile, row in stored.items():
        assert STORED[tile][: len(row)] == row
    big = {tile: Tile(row) for tile, row in STORED.items()}
    ids = list(nodes)
    assert node_hashes(ids, big) == [nodes[i] for i in ids]


def test_missing_or_short_tiles_name_the_nodes_they_hold() -> None:
    short = {(0, 0): Tile(STORED[(0, 0)][: 32 * 100])}
    with pytest.raises(MissingHashes) as caught:
        node_hashes([(0, 5), (3, 12), (8, 0)], short)
    assert caught.value.missing == [(3, 12), (8, 0)]


def test_edge_tiles_are_the_partial_right_edge() -> None:
    assert edge_tiles(0) == {}
    assert edge_tiles(256) == {(1, 0): 1}
    assert edge_tiles(SIZE) == {(0, 257): 44, (1, 1): 1, (2, 0): 1}
    assert tiles_needed(merkle.frontier_ids(SIZE)) == {(2, 0): 1, (1, 1): 1, (0, 257): 44}


def test_resuming_from_stored_tiles_continues_the_same_tiles() -> None:
    size = 5000
    _, stored, _ = _grow([size])
    edge = TileEdge.from_stored(size, stored)
    tree = merkle.CompactRange.from_nodes(size, [NODES[i] for i in merkle.frontier_ids(size)])
    for leaf in LEAVES[size : size + 600]:
        for node_id, node in tree.append(leaf):
            edge.add(node_id, node)
    for tile, row in edge.take().items():
        assert STORED[tile][: len(row)] == row


def test_resuming_refuses_a_short_stored_edge_and_a_gap() -> None:
    with pytest.raises(MissingHashes):
        TileEdge.from_stored(300, {(0, 1): LEAVES[256], (1, 0): NODES[(8, 0)]})  # 43 hashes missing
    edge = TileEdge.from_stored(300, {(0, 1): b"".join(LEAVES[256:300]), (1, 0): NODES[(8, 0)]})
    with pytest.raises(ValueError):
        edge.add((0, 301), LEAVES[301])  # leaf 300 never came
