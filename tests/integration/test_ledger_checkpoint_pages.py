"""ListCheckpoints pages past 1,000 checkpoints exactly as ledger.proto says:
at most 1,000 per page (0 and anything larger mean 1,000), ascending by tree
size, ``next_start_size`` = the last size returned + 1 while more follow and
unset on the last page, so following it returns every stored checkpoint
once. The handler runs in-process over a real PostgreSQL ledger database
holding 2,345 checkpoint rows (sizes with gaps), which keeps the test fast."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import AsyncIterator, Callable

import asyncpg
import pytest

from medledger.ledger.api import LedgerApi
from medledger.testing.ledger import pool_only_api
from medledger.runtime.postgres import apply_migrations, ensure_database
from medledger.v1 import ledger_pb2

import medledger.ledger

COUNT, STEP = 2345, 3  # sizes 0, 3, 6, …: a start_size in a gap must still work
SIZES = [i * STEP for i in range(COUNT)]


@pytest.fixture
async def pool(database_factory: Callable[[str], str]) -> AsyncIterator[asyncpg.Pool]:
    url = database_factory("ledger_pages")
    await ensure_database(url)
    conn = await asyncpg.connect(url)
    try:
        await apply_migrations(conn, Path(medledger.ledger.__file__).parent / "migrations")
        now = datetime.now(timezone.utc)
        await conn.copy_records_to_table("checkpoints", columns=["tree_size", "root_hash", "chain_hash", "note", "signed_at"], records=[
            (size, size.to_bytes(32, "big"), bytes(32), f"origin\n{size}\n".encode(), now) for size in SIZES
        ])
    finally:
        await conn.close()
    created = await asyncpg.create_pool(url, min_size=1, max_size=2)
    assert created is not None
    yield created
    await created.close()


async def all_pages(api: LedgerApi, start: int, page_size: int) -> list[ledger_pb2.ListCheckpointsResponse]:
    pages: list[ledger_pb2.ListCheckpointsResponse] = []
    request = ledger_pb2.ListCheckpointsRequest(start_size=start, page_size=page_size)
    while True:
        page = await api.ListCheckpoints(request, None)
        pages.append(page)
        if not page.HasField("next_start_size"):
            return pages
        assert page.next_start_size == page.checkpoints[-1].tree_size + 1
        request.start_size = page.next_start_size


async def test_list_checkpoints_pages_past_a_thousand(pool: asyncpg.Pool) -> None:
    api = pool_only_api(pool)

    pages = await all_pages(api, 0, 0)  # 0 means 1,000
    assert [len(p.checkpoints) for p in pages] == [1000, 1000, 345]
    listed = [c.tree_size for p in pages for c in p.checkpoints]
    assert listed == SIZES  # every one, once, ascending
    assert all(c.root_hash == c.tree_size.to_bytes(32, "big") for p in pages for c in p.checkpoints)

    # more than 1,000 is served as 1,000; a smaller page size pages the same list
    assert [len(p.checkpoints) for p in await all_pages(api, 0, 5000)] == [1000, 1000, 345]
    assert [c.tree_size for p in await all_pages(api, 0, 700) for c in p.checkpoints] == SIZES

    # a start inside a gap begins at the next stored size; past the newest is one empty last page
    middle = await all_pages(api, 1500 * STEP - 1, 1000)
    assert [c.tree_size for p in middle for c in p.checkpoints] == SIZES[1500:]
    assert [len(p.checkpoints) for p in middle] == [845]
    beyond = await all_pages(api, SIZES[-1] + 1, 0)
    assert len(beyond) == 1 and not beyond[0].checkpoints and not beyond[0].HasField("next_start_size")
    # exactly a page left: no next page is announced
    exact = await all_pages(api, SIZES[COUNT - 1000], 0)
    assert [len(p.checkpoints) for p in exact] == [1000]
