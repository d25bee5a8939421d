"""The long-lived tasks of a service (sequencer, relay, stream processors),
started together and stopped together."""

from __future__ import annotations

import asyncio
from typing import Coroutine


class BackgroundTasks:
    def __init__(self) -> None:
        self.stop = asyncio.Event()  # set when the service stops; tasks watch it
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, work: Coroutine[object, object, None]) -> None:
        self._tasks.append(asyncio.create_task(work))

    async def close(self, cancel: bool = False) -> None:
        """Signal stop, then wait for every task (cancelling them first if asked)."""
        self.stop.set()
        if cancel:
            for task in self._tasks:
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
