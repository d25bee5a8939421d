"""The sequencer's group commit: one transaction takes the batches already
verified and waiting, in consumption order, never more than its bound."""

from __future__ import annotations

import asyncio

from medledger.ledger.intake import Admitted
from medledger.ledger.sequencer import GROUP_COMMIT_BATCHES, _group
from medledger.runtime.positions import Delivery


def _batch(start: int, n: int) -> tuple[list[Delivery], asyncio.Future[list[Admitted]]]:
    records = [Delivery("t", 0, offset, b"v") for offset in range(start, start + n)]
    verdicts: asyncio.Future[list[Admitted]] = asyncio.get_running_loop().create_future()
    verdicts.set_result([Admitted(f"e{offset}", b"h") for offset in range(start, start + n)])
    return records, verdicts  # type: ignore[return-value]


def test_a_group_takes_the_waiting_batches_in_order_up_to_its_bound() -> None:
    async def scenario() -> tuple[list[int], list[str], int]:
        queue: asyncio.Queue = asyncio.Queue()
        first = _batch(0, 3)
        for k in range(1, GROUP_COMMIT_BATCHES + 2):  # more waiting than one group may take
            queue.put_nowait(_batch(k * 3, 3))
        records, verdicts = await _group(first, queue)
        return [r.offset for r in records], [v.event_id for v in verdicts], queue.qsize()

    offsets, ids, left = asyncio.run(scenario())
    assert offsets == list(range(3 * GROUP_COMMIT_BATCHES))
    assert ids == [f"e{o}" for o in offsets]
    assert left == 2  # the rest waits for the next transaction


def test_a_lone_batch_commits_without_waiting_for_more() -> None:
    async def scenario() -> int:
        records, _ = await _group(_batch(0, 5), asyncio.Queue())
        return len(records)

    assert asyncio.run(scenario()) == 5
