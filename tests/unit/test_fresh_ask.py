"""FreshAsk: callers share asks, and none is answered from an ask that began
before it called (runtime/coalesce.py)."""

from __future__ import annotations

import asyncio

import pytest

from medledger.runtime.coalesce import FreshAsk


class Log:
    """A log whose end the test moves; each ask reports the end it saw when
    it started and waits for the test to let it finish."""

    def __init__(self) -> None:
        self.end = 0
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.fail_next = False

    async def ask(self) -> int:
        seen = self.end
        self.started.set()
        await self.release.wait()
        self.release.clear()
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("broker away")
        return seen


async def _until_started(log: Log) -> None:
    await asyncio.wait_for(log.started.wait(), 1)
    log.started.clear()


async def test_callers_arriving_together_share_one_ask() -> None:
    log = Log()
    fresh = FreshAsk(log.ask)
    callers = [asyncio.ensure_future(fresh()) for _ in range(10)]
    await _until_started(log)
    log.release.set()
    assert await asyncio.gather(*callers) == [0] * 10
    assert fresh.asks == 1


async def test_a_caller_arriving_during_an_ask_gets_the_next_one() -> None:
    log = Log()
    fresh = FreshAsk(log.ask)
    early = asyncio.ensure_future(fresh())
    await _until_started(log)
    log.end = 5  # an event lands after the first ask saw the end
    late = [asyncio.ensure_future(fresh()) for _ in range(3)]
    await asyncio.sleep(0)
    log.release.set()
    assert await early == 0
    await _until_started(log)
    log.release.set()
    assert await asyncio.gather(*late) == [5, 5, 5]  # never the stale 0
    assert fresh.asks == 2


async def test_a_failed_ask_reaches_its_callers_and_the_next_caller_asks_again() -> None:
    log = Log()
    fresh = FreshAsk(log.ask)
    log.fail_next = True
    failing = asyncio.ensure_future(fresh())
    await _until_started(log)
    log.release.set()
    with pytest.raises(ConnectionError):
        await failing
    retry = asyncio.ensure_future(fresh())
    await _until_started(log)
    log.release.set()
    assert await retry == 0
    assert fresh.asks == 2


async def test_a_caller_that_gives_up_does_not_cancel_the_others() -> None:
    log = Log()
    fresh = FreshAsk(log.ask)
    impatient = asyncio.ensure_future(asyncio.wait_for(fresh(), 0.01))
    patient = asyncio.ensure_future(fresh())
    await _until_started(log)
    with pytest.raises(asyncio.TimeoutError):
        await impatient
    log.release.set()
    assert await patient == 0
    assert fresh.asks == 1
