"""Noticing that the monitor stopped making progress (pure core, no I/O).

faust-streaming sometimes leaves a replica that took over partitions in a
rebalance fetching records but never handing them to its agents: its lag
stays, nothing is counted, no alert fires, and faust reports the worker ready
(the two-replica failover test caught it about one run in three). A fresh
rebalance clears it. ``StallWatch`` says when one is due: some partition this
replica owns has had records waiting (log end beyond the committed offset)
while its committed offset stayed where it was for ``stall_s`` seconds. A
replica that is merely slow still commits, so it is never taken for stalled
(docs/architecture.md, Access monitor).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

# (topic, partition, log end, committed offset) for each partition this replica owns
Measured = tuple[str, int, int, int]


@dataclass
class StallWatch:
    stall_s: float
    # (topic, partition) -> (committed offset, when it was first seen with records waiting)
    _waiting: dict[tuple[str, int], tuple[int, float]] = field(default_factory=dict)

    def stalled(self, now: float, measured: Iterable[Measured]) -> list[tuple[str, int]]:
        """The partitions stuck for at least ``stall_s`` (then forgotten, so the
        next verdict needs another full ``stall_s``); empty while all progress."""
        waiting: dict[tuple[str, int], tuple[int, float]] = {}
        for topic, partition, end, committed in measured:
            if end <= committed:
                continue  # nothing waiting: not stalled, however long it stays
            key = (topic, partition)
            before = self._waiting.get(key)
            waiting[key] = before if before is not None and before[0] == committed else (committed, now)
        self._waiting = waiting  # partitions no longer owned, caught up or moving start afresh
        stuck = sorted(key for key, (_, since) in waiting.items() if now - since >= self.stall_s)
        if stuck:
            self._waiting = {}
        return stuck
