"""The page cache between a benchmark's phases.

Kafka and PostgreSQL share one disk on the development machine. A burst phase
dirties hundreds of MB of Kafka's log pages, which the kernel writes back up to
30 s later (``vm.dirty_expire_centisecs``), inside whatever phase runs then;
while it does, PostgreSQL's WAL flushes wait 100–220 ms instead of 1–3 ms
(docs/benchmarks.md, 2026-12-02 05:15 UTC). Writing it back between phases
makes each phase carry its own I/O, not the one before it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def dirty_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """Bytes in the page cache waiting to be written back (0 where unknown)."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("Dirty:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def settle() -> str:
    """Write back every dirty page now; says how much there was and how long it took."""
    dirty, started = dirty_bytes(), time.monotonic()
    os.sync()
    return f"wrote back {dirty / 2**20:,.0f} MB the phases before had left dirty, in {time.monotonic() - started:.1f}s"
