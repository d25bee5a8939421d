"""Proofs: the pure Merkle plans, one fetch of the nodes they need from a
NodeSource (the store, in the service), then the pure assembly. Argument
checks say which status a caller gets: OUT_OF_RANGE beyond the current tree,
INVALID_ARGUMENT when the arguments contradict each other. And the offline
proof bundle (``medledger.v1.ProofBundle``) built from them, which the ledger
serves (GetProofBundle) and the audit tooling writes and checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from medledger.ledger import merkle
from medledger.runtime.errors import InvalidArgument, OutOfRange
from medledger.v1 import ledger_pb2


class NodeSource(Protocol):
    """Where a proof's node hashes come from."""

    async def nodes(self, ids: Sequence[merkle.NodeId]) -> Sequence[bytes]:
        """Hashes of these perfect nodes, in the order asked, in one round trip."""
        ...


@dataclass(frozen=True)
class Proof:
    hashes: list[bytes]
    roots: tuple[bytes, ...]


def check_inclusion(index: int, tree_size: int, current: int) -> None:
    if tree_size > current:
        raise OutOfRange(f"tree_size {tree_size} is beyond the current tree of {current} entries")
    if index >= current:
        raise OutOfRange(f"index {index} is beyond the current tree of {current} entries")
    if tree_size == 0:
        raise OutOfRange("the log is empty: no checkpoint covers any entry yet")
    if index >= tree_size:
        raise InvalidArgument(f"index {index} is not inside a tree of {tree_size} entries")


def check_consistency(first: int, second: int, current: int) -> None:
    if second > current:
        raise OutOfRange(f"second_size {second} is beyond the current tree of {current} entries")
    if first > current:
        raise OutOfRange(f"first_size {first} is beyond the current tree of {current} entries")
    if first == 0:
        raise InvalidArgument("first_size must be at least 1 (every tree is consistent with the empty one)")
    if first > second:
        raise InvalidArgument(f"first_size {first} is larger than second_size {second}")


async def _fetch(source: NodeSource, plan: merkle.ProofPlan, *sizes: int) -> Proof:
    """One fetch for the proof's nodes and the roots it is checked against."""
    root_ids = [merkle.root_plan(size) for size in sizes]
    wanted = list(dict.fromkeys([*plan.ids, *(i for ids in root_ids for i in ids)]))
    found = dict(zip(wanted, await source.nodes(wanted)))
    hashes = merkle.assemble(plan, [found[i] for i in plan.ids])
    roots = tuple(merkle.root_from([found[i] for i in ids]) for ids in root_ids)
    return Proof(hashes, roots)


async def inclusion(source: NodeSource, index: int, tree_size: int) -> Proof:
    return await _fetch(source, merkle.inclusion_plan(index, tree_size), tree_size)


async def consistency(source: NodeSource, first: int, second: int) -> Proof:
    return await _fetch(source, merkle.consistency_plan(first, second), first, second)


def key_name(verifier_key: str) -> str:
    """``<name>+<hash>`` of a verifier-key text: what a bundle names."""
    return "+".join(verifier_key.strip().split("+")[:2])


def bundle(
    entry: ledger_pb2.Entry, proof: ledger_pb2.InclusionProof, checkpoint: bytes, verifier_key: str
) -> ledger_pb2.ProofBundle:
    return ledger_pb2.ProofBundle(
        entry=entry, inclusion_proof=proof, checkpoint=checkpoint, verifier_key_name=key_name(verifier_key)
    )
