"""One ask answering many callers, without handing anyone a stale answer.

Commands sync their projection to "the log end now" before deciding
(read-your-log): each asked Kafka for the end offsets itself, and at 200
writes/s those asks queued behind one another on the one client connection.
``FreshAsk`` lets every caller that arrives while an ask is in flight share
the *next* ask, which starts after all of them arrived: no caller is answered
from an ask begun before its call (it could miss an event that landed in
between), and at most two asks are ever outstanding at once.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, TypeVar

T = TypeVar("T")


class FreshAsk(Generic[T]):
    """Coalesces calls of ``ask`` (see the module docstring)."""

    def __init__(self, ask: Callable[[], Awaitable[T]]) -> None:
        self._ask = ask
        self._next: asyncio.Future[T] | None = None  # the round new callers join
        self._runner: asyncio.Task[None] | None = None
        self.asks = 0  # how many times ``ask`` ran (for tests and curiosity)

    async def __call__(self) -> T:
        """The answer of an ask that started after this call."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            # nobody left waiting is not an error: retrieve it so it is not logged
            self._next.add_done_callback(lambda done: done.cancelled() or done.exception())
        if self._runner is None or self._runner.done():
            self._runner = asyncio.ensure_future(self._run())
        # shielded: one caller giving up (a timeout) does not cancel the others' answer
        return await asyncio.shield(self._next)

    async def _run(self) -> None:
        while self._next is not None:
            round_, self._next = self._next, None
            self.asks += 1
            try:
                answer = await self._ask()
            except asyncio.CancelledError:
                round_.cancel()
                raise
            except Exception as exc:
                round_.set_exception(exc)
            else:
                round_.set_result(answer)
