"""WatchCheckpoints' feed: one database poll per process, fanned out to every
watcher (docs/architecture.md, Decisions: "One poll for every checkpoint
watcher").

Watching is public, so a stream must cost next to nothing: each watcher is a
coroutine reading a shared, bounded backlog of recent checkpoints, never a
database query of its own. One poller task runs while anyone watches; it
reads new checkpoints at once when this process signed one (``notify``) and
otherwise every poll interval (a standby's watchers). Streams beyond
``max_watchers`` are refused with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import AsyncIterator, Callable

import asyncpg

from medledger.ledger import store
from medledger.ledger.metrics import WATCH_POLLS, WATCH_REFUSED, WATCH_STREAMS
from medledger.ledger.publisher import checkpoint_message
from medledger.runtime.errors import ResourceExhausted
from medledger.v1 import ledger_pb2

log = logging.getLogger(__name__)


class CheckpointFeed:
    """The checkpoints this process knows, shared by all its watchers.

    A watcher that falls more than ``backlog`` checkpoints behind (it stopped
    reading) continues with the oldest one still kept: every checkpoint is
    consistent with the ones before, and ListCheckpoints serves any gap."""

    def __init__(
        self, pool: Callable[[], asyncpg.Pool], max_watchers: int, poll_s: float = 0.1, backlog: int = 1000
    ) -> None:
        self._pool = pool  # raises while the database is not connected yet
        self.max_watchers = max_watchers
        self.poll_s = poll_s
        self._recent: deque[ledger_pb2.Checkpoint] = deque(maxlen=backlog)
        self._published = asyncio.Event()  # replaced each time checkpoints arrive
        self._wake = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self.watchers = 0
        WATCH_STREAMS.set_function(lambda: self.watchers)

    def notify(self) -> None:
        """This process signed a checkpoint: poll now rather than at the interval."""
        self._wake.set()

    async def watch(self) -> AsyncIterator[ledger_pb2.Checkpoint]:
        """The current checkpoint, then each newer one, until the caller stops."""
        if self.watchers >= self.max_watchers:
            WATCH_REFUSED.inc()
            raise ResourceExhausted(
                f"this ledger already serves {self.max_watchers} checkpoint watchers "
                "(MEDLEDGER_LEDGER_MAX_WATCHERS); retry later or use another replica"
            )
        self.watchers += 1
        if self._poller is None or self._poller.done():
            self._recent.clear()  # the first watcher starts from the latest checkpoint, not a stale one
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        try:
            last = -1
            while True:
                published = self._published  # taken before reading, so no arrival is missed
                fresh = [cp for cp in self._recent if cp.tree_size > last]
                for cp in fresh if last >= 0 else fresh[-1:]:
                    yield cp
                    last = cp.tree_size
                await published.wait()
        finally:
            self.watchers -= 1
            if self.watchers == 0:
                await self.close()

    async def close(self) -> None:
        """Stop polling (the last watcher left, or the service stops)."""
        poller, self._poller = self._poller, None
        if poller is not None and poller is not asyncio.current_task():
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)

    async def _poll(self) -> None:
        while True:
            self._wake.clear()  # a notify during the query polls again right after it
            try:
                fresh = await self._read_new()
            except Exception as exc:  # noqa: BLE001 - the database is away or not connected yet: keep trying
                log.warning("checkpoint watch poll failed", extra={"error": type(exc).__name__})
                fresh = []
            if fresh:
                self._recent.extend(fresh)
                published, self._published = self._published, asyncio.Event()
                published.set()
            if len(fresh) == self._recent.maxlen:
                continue  # more may be waiting
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            except asyncio.TimeoutError:
                pass

    async def _read_new(self) -> list[ledger_pb2.Checkpoint]:
        async with self._pool().acquire() as conn:
            WATCH_POLLS.inc()
            if not self._recent:
                latest = await store.latest_checkpoint(conn)
                found = [latest] if latest else []
            else:
                found = await store.checkpoints_after(conn, self._recent[-1].tree_size, self._recent.maxlen or 1)
        return [checkpoint_message(cp) for cp in found]
