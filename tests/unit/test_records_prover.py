"""The records service's proof lookup (medledger.records.peers.LedgerProver)
against a stand-in ledger: the bundle it returns is always proved against the
checkpoint it carries, even when the ledger signs a new checkpoint between
the calls, and an event not yet under a checkpoint is PENDING (None)."""

from __future__ import annotations

from typing import Any

import pytest

from medledger.records.peers import LedgerProver
from medledger.runtime.lru import Lru
from medledger.runtime.errors import NotFound
from medledger.v1 import ledger_pb2


class FakeCredentials:
    async def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", "Bearer test"),)


class FakeLedger:
    """Answers like the ledger's gRPC stub; ``sizes`` is what the newest
    checkpoint says on each GetCheckpoint, ``current`` what tree_size=0 means."""

    def __init__(self, index: int, sizes: list[int], current: int) -> None:
        self.index, self.sizes, self.current = index, sizes, current
        self.entry_calls = 0
        self.proof_requests: list[int] = []

    async def GetCheckpoint(self, request: Any, **_: Any) -> ledger_pb2.Checkpoint:
        size = self.sizes.pop(0)
        return ledger_pb2.Checkpoint(tree_size=size, checkpoint=f"checkpoint {size}".encode())

    async def GetEntryByEventId(self, request: Any, **_: Any) -> ledger_pb2.Entry:
        self.entry_calls += 1
        if request.event_id != "event-1":
            raise NotFound("no such event")
        return ledger_pb2.Entry(index=self.index)

    async def GetVerifierKey(self, request: Any, **_: Any) -> ledger_pb2.VerifierKey:
        return ledger_pb2.VerifierKey(verifier_key="ledger+01234567+AAAA")

    async def GetInclusionProof(self, request: Any, **_: Any) -> ledger_pb2.InclusionProof:
        self.proof_requests.append(request.tree_size)
        size = request.tree_size or self.current
        if request.index >= size:
            raise NotFound("index beyond the tree")
        return ledger_pb2.InclusionProof(leaf_index=request.index, tree_size=size)


def prover_for(ledger: FakeLedger) -> LedgerProver:
    prover = LedgerProver("127.0.0.1:1", FakeCredentials())
    prover._stub = lambda: ledger
    return prover


async def test_the_proof_is_always_against_the_checkpoint_in_the_bundle() -> None:
    ledger = FakeLedger(index=3, sizes=[10, 10, 11], current=10)
    prover = prover_for(ledger)
    first = await prover.prove("event-1")
    assert first is not None and first.inclusion_proof.tree_size == 10 and first.checkpoint == b"checkpoint 10"
    again = await prover.prove("event-1")  # entry known: checkpoint and proof asked side by side
    assert again is not None and again.inclusion_proof.tree_size == 10
    assert ledger.entry_calls == 1, "a sequenced entry never changes, so it is asked once"
    ledger.current = 12  # a checkpoint was signed between GetCheckpoint and the proof
    third = await prover.prove("event-1")
    assert third is not None and third.checkpoint == b"checkpoint 11" and third.inclusion_proof.tree_size == 11
    assert ledger.proof_requests[-2:] == [0, 11]


async def test_pending_until_a_checkpoint_covers_the_entry_and_unknown_events_are_pending() -> None:
    ledger = FakeLedger(index=10, sizes=[10, 10, 11], current=10)
    prover = prover_for(ledger)
    assert await prover.prove("event-1") is None
    assert await prover.prove("event-1") is None  # the early proof failed: still pending, no error
    proved = await prover.prove("event-1")
    assert proved is not None and proved.inclusion_proof.tree_size == 11
    assert await prover_for(FakeLedger(index=0, sizes=[5], current=5)).prove("other") is None


@pytest.mark.parametrize("limit", [1, 3])
def test_lru_keeps_the_most_recently_used(limit: int) -> None:
    cache: Lru[int] = Lru(limit)
    for i in range(5):
        cache.put(str(i), i)
        assert cache.get(str(i)) == i
    assert cache.get("0") is None and cache.get("4") == 4
