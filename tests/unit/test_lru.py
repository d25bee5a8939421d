"""runtime/lru.py: the bounded map the outbox relay keeps its recent ids in."""

from __future__ import annotations

import pytest

from medledger.runtime.lru import Lru


@pytest.mark.parametrize("limit", [1, 3])
def test_lru_keeps_the_most_recently_used(limit: int) -> None:
    cache: Lru[int] = Lru(limit)
    for i in range(5):
        cache.put(str(i), i)
        assert cache.get(str(i)) == i
    assert cache.get("0") is None and cache.get("4") == 4
