"""C2SP tlog-tiles paths, geometry and entry bundles (services/ledger/tlog_tiles.py)."""

from __future__ import annotations

import pytest

from medledger.ledger import tlog_tiles
from medledger.ledger.tlog_tiles import TilePathError, TileRequest, parse_tile_path


@pytest.mark.parametrize(
    "index, text",
    [(0, "000"), (7, "007"), (999, "999"), (1000, "x001/000"), (1234067, "x001/x234/067"), (10**9, "x001/x000/x000/000")],
)
def test_index_encoding_is_the_specs(index: int, text: str) -> None:
    assert tlog_tiles.encode_index(index) == text
    assert parse_tile_path(f"/tile/0/{text}") == TileRequest(0, index, 256)


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/tile/0/000", TileRequest(0, 0, 256)),
        ("/tile/1/x001/x234/067.p/17", TileRequest(1, 1234067, 17)),
        ("/tile/63/000.p/1", TileRequest(63, 0, 1)),
        ("/tile/entries/x002/005", TileRequest(0, 2005, 256, entries=True)),
        ("/tile/entries/012.p/255", TileRequest(0, 12, 255, entries=True)),
    ],
)
def test_paths_parse_and_round_trip(path: str, expected: TileRequest) -> None:
    assert parse_tile_path(path) == expected
    assert expected.path() == path


@pytest.mark.parametrize(
    "path",
    [
        "/tile/0/0", "/tile/0/0000", "/tile/00/000", "/tile/01/000", "/tile/64/000", "/tile/0/x001",
        "/tile/0/001/002", "/tile/0/x000/001", "/tile/0/000.p/0", "/tile/0/000.p/256", "/tile/0/000.p/010",
        "/tile/0/000.p/", "/tile/0/000.p", "/tile/-1/000", "/tile/entries/000/", "/tile/entries/x1/000",
        "/tile/0/000/../001", "/tile/entries", "/tile/0/١٢٣",
    ],
)
def test_malformed_paths_are_refused(path: str) -> None:
    with pytest.raises(TilePathError):
        parse_tile_path(path)


def test_tile_geometry_follows_the_tree_size() -> None:
    # The spec's example: a tree of 70,000 has 273 full level-0 tiles, a partial one of
    # width 112, one full level-1 tile, a partial level-1 tile of width 17 and a level-2 tile of width 1.
    size = 70_000
    assert TileRequest(0, 272, 256).available(size) and not TileRequest(0, 273, 256).available(size)
    assert TileRequest(0, 273, 112).available(size) and not TileRequest(0, 273, 113).available(size)
    assert TileRequest(1, 0, 256).available(size) and not TileRequest(1, 1, 256).available(size)
    assert TileRequest(1, 1, 17).available(size) and not TileRequest(1, 1, 18).available(size)
    assert TileRequest(2, 0, 1).available(size) and not TileRequest(2, 0, 2).available(size)
    assert TileRequest(1, 1, 17).node_level == 8 and TileRequest(1, 1, 17).first == 256


def test_bundles_hold_exact_entries_behind_uint16_lengths() -> None:
    entries = [b"", b"a", bytes(range(256)) * 3, b"\x00" * 65535]
    bundle = tlog_tiles.encode_bundle(0, entries)
    assert bundle[:5] == b"\x00\x00\x00\x01a"
    assert tlog_tiles.decode_bundle(bundle) == entries
    with pytest.raises(ValueError):
        tlog_tiles.decode_bundle(bundle[:-1])


def test_an_entry_a_bundle_cannot_carry_is_named_not_truncated() -> None:
    with pytest.raises(tlog_tiles.BundleEntryTooLarge) as caught:
        tlog_tiles.encode_bundle(512, [b"x", b"y" * 65536])
    assert (caught.value.index, caught.value.size) == (513, 65536)
