"""LedgerClient.advance: a client that remembers the last checkpoint it
trusted accepts a newer one only with a consistency proof, so a ledger cannot
show it one history and later another (a fork, a rewritten entry, a rollback).
The ledger here is a stand-in serving RFC 9162 proofs of trees built in
memory (the reference implementation of tests/unit/merkle_reference.py)."""

from __future__ import annotations

import pytest

from medledger.client import LedgerClient, ProofInvalid
from medledger.ledger import note
from medledger.v1 import ledger_pb2
from tests.unit.merkle_reference import reference_consistency, reference_root


class ServedLog:
    """GetConsistencyProof over the leaves it is given, as a ledger serves it."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.leaves = leaves

    def GetConsistencyProof(self, request: ledger_pb2.GetConsistencyProofRequest, timeout: float) -> ledger_pb2.ConsistencyProof:
        assert request.second_size == len(self.leaves)
        return ledger_pb2.ConsistencyProof(
            first_size=request.first_size, second_size=request.second_size,
            hashes=reference_consistency(self.leaves, request.first_size),
        )


def checkpoint(leaves: list[bytes]) -> note.Checkpoint:
    return note.Checkpoint("test.log", len(leaves), reference_root(leaves))


LEAVES = [f"entry {i}".encode() for i in range(13)]


def test_a_checkpoint_that_extends_the_trusted_one_is_accepted() -> None:
    served = ServedLog(LEAVES)
    ledger = LedgerClient(served)  # type: ignore[arg-type]
    trusted = checkpoint(LEAVES[:6])
    newer = checkpoint(LEAVES)
    assert ledger.advance(trusted, newer) == newer
    assert ledger.advance(newer, newer) == newer


def test_a_rewritten_history_is_refused() -> None:
    forked = LEAVES[:3] + [b"rewritten entry 3"] + LEAVES[4:]
    ledger = LedgerClient(ServedLog(forked))  # type: ignore[arg-type]
    with pytest.raises(ProofInvalid, match="not consistent"):
        ledger.advance(checkpoint(LEAVES[:6]), checkpoint(forked))


def test_two_checkpoints_of_one_size_with_different_roots_are_a_fork() -> None:
    ledger = LedgerClient(ServedLog(LEAVES))  # type: ignore[arg-type]
    with pytest.raises(ProofInvalid, match="forked"):
        ledger.advance(checkpoint(LEAVES[:6]), checkpoint(LEAVES[:5] + [b"other"]))


def test_a_rollback_is_refused() -> None:
    ledger = LedgerClient(ServedLog(LEAVES))  # type: ignore[arg-type]
    with pytest.raises(ProofInvalid, match="older"):
        ledger.advance(checkpoint(LEAVES), checkpoint(LEAVES[:6]))
