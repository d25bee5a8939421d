"""One active worker per database: a PostgreSQL advisory lock held on the very
connection the worker writes with. If the worker's process or connection
dies, the lock goes with it and a standby takes over; a worker that lost its
connection cannot write anything more, so two never write at once."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

import asyncpg


async def lead_when_possible(
    database_url: str,
    lock_id: int,
    stop: asyncio.Event,
    lead: Callable[[asyncpg.Connection], Awaitable[None]],
    poll_s: float = 0.25,
    on_standby: Callable[[], None] = lambda: None,
) -> None:
    """Wait (as a standby, polling every poll_s) until this process holds the
    lock, then run ``lead(conn)`` with it; return early if stop is set first.
    ``on_standby`` is called each time the lock is found taken, never before
    the first attempt, so a lone instance is never briefly reported standby."""
    conn = await asyncpg.connect(database_url, timeout=5)
    try:
        while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_id):
            on_standby()  # only once another instance is known to lead
            try:
                await asyncio.wait_for(stop.wait(), poll_s)
                return
            except asyncio.TimeoutError:
                pass
        await lead(conn)
    finally:
        await conn.close(timeout=2)
