"""The sequencer joins the checked batches already waiting into one
transaction (ledger/sequencer.join_waiting): the log's order must be the
order the batches were read in, and a batch arriving while the join waits for
verdicts must not be swallowed, or a steady stream would postpone the commit
indefinitely."""

from __future__ import annotations

import asyncio

from medledger.ledger.intake import Admitted, SourceRecord
from medledger.ledger.sequencer import Checked, Verdict, join_waiting


def _batch(first_offset: int, count: int) -> tuple[list[SourceRecord], list[Verdict]]:
    records = [SourceRecord("t.consent.events", 0, offset, b"value-%d" % offset)
               for offset in range(first_offset, first_offset + count)]
    verdicts: list[Verdict] = [Admitted(f"event-{r.offset}", bytes(32)) for r in records]
    return records, verdicts


def _checked(records: list[SourceRecord], verdicts: list[Verdict], delay: float = 0.0) -> Checked:
    async def verified() -> list[Verdict]:
        await asyncio.sleep(delay)
        return verdicts

    return records, asyncio.ensure_future(verified())


async def test_waiting_batches_join_in_read_order_with_their_verdicts() -> None:
    queue: asyncio.Queue[Checked] = asyncio.Queue(maxsize=2)
    first = _checked(*_batch(0, 3), delay=0.01)
    await queue.put(_checked(*_batch(3, 2), delay=0.02))  # its verdicts come last: order is still the read order
    await queue.put(_checked(*_batch(5, 4)))

    records, verdicts = await join_waiting(first, queue)

    assert [r.offset for r in records] == list(range(9))
    assert [v.event_id for v in verdicts if isinstance(v, Admitted)] == [f"event-{n}" for n in range(9)]
    assert queue.empty()


async def test_a_batch_arriving_during_the_join_is_left_for_the_next_transaction() -> None:
    queue: asyncio.Queue[Checked] = asyncio.Queue(maxsize=2)
    first = _checked(*_batch(0, 2), delay=0.05)
    await queue.put(_checked(*_batch(2, 2)))

    async def reader_keeps_reading() -> None:
        await asyncio.sleep(0.01)
        await queue.put(_checked(*_batch(4, 2)))

    reading = asyncio.ensure_future(reader_keeps_reading())
    records, _ = await join_waiting(first, queue)
    await reading

    assert [r.offset for r in records] == [0, 1, 2, 3]
    later, _ = await join_waiting(queue.get_nowait(), queue)
    assert [r.offset for r in later] == [4, 5]


async def test_nothing_waiting_is_the_first_batch_alone() -> None:
    queue: asyncio.Queue[Checked] = asyncio.Queue(maxsize=2)
    records, verdicts = await join_waiting(_checked(*_batch(7, 1)), queue)
    assert [r.offset for r in records] == [7] and len(verdicts) == 1
