"""Retrying with exponential backoff, the one way MedLedger waits out outages."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, TypeVar

from medledger.runtime.errors import MedLedgerError

log = logging.getLogger(__name__)
T = TypeVar("T")


async def _sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass


async def with_backoff(
    what: str, attempt: Callable[[], Awaitable[T]], stop: asyncio.Event, base: float = 0.2, cap: float = 5.0
) -> T | None:
    """Run attempt until it succeeds, sleeping base*2^n (capped) after each
    retriable failure; None if stop is set first. Non-retriable errors propagate."""
    delay = base
    while not stop.is_set():
        try:
            return await attempt()
        except MedLedgerError as exc:
            if not exc.retriable:
                raise
            log.warning("dependency not ready, retrying", extra={"what": what, "error": str(exc), "delay_s": delay})
        await _sleep_unless_stopped(stop, delay)
        delay = min(cap, delay * 2)
    return None


async def keep_running(
    what: str, job: Callable[[], Awaitable[None]], stop: asyncio.Event, base: float = 0.2, cap: float = 5.0
) -> None:
    """Run a long-lived job until stop is set, restarting it with backoff after
    any failure (Kafka or PostgreSQL away); the outage shows in health meanwhile."""
    delay = base
    while not stop.is_set():
        try:
            await job()
            delay = base
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - retried; a bug here shows in logs, not as a dead task
            log.warning("background job failed, retrying", extra={"job": what, "error": repr(exc), "delay_s": delay})
            await _sleep_unless_stopped(stop, delay)
            delay = min(cap, delay * 2)


async def until_stopped(job: Awaitable[None], stop: asyncio.Event) -> None:
    """Run job, a reader that never returns by itself, and cancel it once stop
    is set: a service that closes its background tasks gracefully (waiting
    rather than cancelling) would otherwise wait for it forever, and be
    killed by its supervisor after the grace period."""
    task = asyncio.ensure_future(job)
    try:
        await stop.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
