"""Batches of envelopes on the monitor's repartition topic. Pure.

The router forwards the events a rule counts to the partition of their subject,
many per Kafka record: faust's cost is per record, and one record per event
would halve what the monitor sustains. A frame is each envelope's exact bytes
behind its length (4 bytes, big-endian), so the counter verifies the producer's
signature over the very bytes the producer published.
"""

from __future__ import annotations

import struct
from typing import Iterator

_LENGTH = struct.Struct(">I")
# A frame grows to this size at most, unless one envelope alone is larger (the
# event topics hold envelopes up to about 1 MiB; the repartition topic twice that).
FRAME_BYTES = 256 * 1024


def frame(envelopes: list[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(e)) + e for e in envelopes)


def unframe(data: bytes) -> Iterator[bytes]:
    """The envelopes of a frame; ValueError where it is cut short."""
    view = memoryview(data)
    offset = 0
    while offset < len(view):
        if offset + _LENGTH.size > len(view):
            raise ValueError(f"frame cut short at byte {offset}")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if offset + length > len(view):
            raise ValueError(f"frame cut short at byte {offset}: {length} bytes announced")
        yield bytes(view[offset : offset + length])
        offset += length


class Frames:
    """Envelopes gathered per partition into frames of at most FRAME_BYTES."""

    def __init__(self, limit: int = FRAME_BYTES) -> None:
        self.limit = limit
        self._open: dict[int, tuple[list[bytes], int]] = {}
        self.full: list[tuple[int, bytes]] = []

    def add(self, partition: int, envelope: bytes) -> None:
        pending, size = self._open.get(partition, ([], 0))
        if pending and size + _LENGTH.size + len(envelope) > self.limit:
            self.full.append((partition, frame(pending)))
            pending, size = [], 0
        pending.append(envelope)
        self._open[partition] = (pending, size + _LENGTH.size + len(envelope))

    def drain(self) -> list[tuple[int, bytes]]:
        """Every frame, full ones first, each partition's in order; empties the gatherer."""
        out = self.full + [(p, frame(pending)) for p, (pending, _) in sorted(self._open.items())]
        self.full, self._open = [], {}
        return out
