"""C2SP tlog-tiles (https://c2sp.org/tlog-tiles) paths, tile geometry and entry
bundle encoding, with no I/O: the HTTP adapter (tiles.py) parses a request path
into a TileRequest, asks storage for what ``node_range`` names and encodes it.

A tile at level L, index N holds the Merkle tree hashes at tree level 8*L with
indices [256*N, 256*N + width): every one a perfect subtree, so exactly the
nodes the ledger already stores (level 0 being the entries' leaf hashes). Full
tiles (256 wide) never change; a partial tile ``.p/<W>`` is the first W hashes
of a tile the tree has not filled yet, and is immutable too once those W exist.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT  # 256 hashes per full tile
MAX_LEVEL = 63
# An entry bundle prefixes each entry with a big-endian uint16 length.
MAX_BUNDLED_ENTRY_SIZE = 0xFFFF

_SEGMENT = r"(?:x\d{3}/)*\d{3}"
_WIDTH = r"(?:\.p/(?P<width>[1-9]\d{0,2}))?"
_HASH_TILE = re.compile(rf"/tile/(?P<level>0|[1-9]\d?)/(?P<index>{_SEGMENT}){_WIDTH}", re.ASCII)
_ENTRY_BUNDLE = re.compile(rf"/tile/entries/(?P<index>{_SEGMENT}){_WIDTH}", re.ASCII)


class TilePathError(ValueError):
    """A path that names no tile: the client's mistake (HTTP 400)."""


class BundleEntryTooLarge(ValueError):
    """An entry longer than an entry bundle's uint16 length prefix can say."""

    def __init__(self, index: int, size: int) -> None:
        super().__init__(
            f"entry {index} is {size} bytes, over the {MAX_BUNDLED_ENTRY_SIZE}-byte limit of a"
            " tlog-tiles entry bundle; read it with GetEntries"
        )
        self.index = index
        self.size = size


@dataclass(frozen=True)
class TileRequest:
    """A hash tile (``level`` 0..63) or, with ``entries``, an entry bundle.
    ``width`` is 256 for a full tile, 1..255 for a partial one."""

    level: int
    index: int
    width: int
    entries: bool = False

    @property
    def partial(self) -> bool:
        return self.width < TILE_WIDTH

    @property
    def node_level(self) -> int:
        """The tree level of the hashes in this tile."""
        return TILE_HEIGHT * self.level

    @property
    def first(self) -> int:
        """Index, at ``node_level``, of the tile's first hash (or entry)."""
        return self.index * TILE_WIDTH

    def available(self, tree_size: int) -> bool:
        """Whether a tree of this size holds every hash (entry) of the tile."""
        return self.first + self.width <= tree_size >> self.node_level

    def path(self) -> str:
        """The tile's path, the inverse of ``parse_tile_path``."""
        kind = "entries" if self.entries else str(self.level)
        suffix = f".p/{self.width}" if self.partial else ""
        return f"/tile/{kind}/{encode_index(self.index)}{suffix}"


def encode_index(index: int) -> str:
    """The tile index as zero-padded 3-digit path elements, all but the last
    prefixed with ``x``: 1234067 -> ``x001/x234/067``."""
    if index < 0:
        raise ValueError("a tile index is not negative")
    groups = [f"{index % 1000:03d}"]
    index //= 1000
    while index:
        groups.append(f"x{index % 1000:03d}")
        index //= 1000
    return "/".join(reversed(groups))


def _decode_index(text: str) -> int:
    groups = text.split("/")
    if len(groups) > 1 and groups[0] == "x000":
        # Leading zero groups would give one tile many names (and caches many copies).
        raise TilePathError("a tile index has no leading x000 element")
    value = 0
    for group in groups:
        value = value * 1000 + int(group.removeprefix("x"))
    return value


def parse_tile_path(path: str) -> TileRequest:
    """The tile a request path names, or TilePathError."""
    match = _ENTRY_BUNDLE.fullmatch(path)
    entries = match is not None
    if match is None:
        match = _HASH_TILE.fullmatch(path)
    if match is None:
        raise TilePathError("not a tlog-tiles path: /tile/<L>/<N>[.p/<W>] or /tile/entries/<N>[.p/<W>]")
    width = int(match["width"]) if match["width"] else TILE_WIDTH
    if match["width"] and width >= TILE_WIDTH:
        raise TilePathError(f"a partial tile is 1 to {TILE_WIDTH - 1} wide")
    level = 0 if entries else int(match["level"])
    if level > MAX_LEVEL:
        raise TilePathError(f"a tile level is 0 to {MAX_LEVEL}")
    return TileRequest(level, _decode_index(match["index"]), width, entries)


def encode_bundle(first_index: int, entries: Sequence[bytes]) -> bytes:
    """An entry bundle: each entry's exact bytes after its big-endian uint16 length."""
    parts: list[bytes] = []
    for offset, entry in enumerate(entries):
        if len(entry) > MAX_BUNDLED_ENTRY_SIZE:
            raise BundleEntryTooLarge(first_index + offset, len(entry))
        parts.append(len(entry).to_bytes(2, "big"))
        parts.append(entry)
    return b"".join(parts)


def decode_bundle(data: bytes) -> list[bytes]:
    """The entries of a bundle (for tests and auditors reading bundles)."""
    entries: list[bytes] = []
    at = 0
    while at < len(data):
        if at + 2 > len(data):
            raise ValueError("truncated entry length")
        size = int.from_bytes(data[at : at + 2], "big")
        at += 2
        if at + size > len(data):
            raise ValueError("truncated entry")
        entries.append(data[at : at + size])
        at += size
    return entries
