"""The Merkle core against the published RFC 6962 vectors, the naive RFC definitions,
tampered proofs and hypothesis properties."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medledger.ledger.merkle import (
    EMPTY_ROOT,
    GENESIS_CHAIN,
    CompactRange,
    CompactRangeError,
    Hash,
    NodeId,
    ProofError,
    ProofPlan,
    ProofShapeError,
    RootMismatchError,
    assemble,
    chain_hash,
    consistency_plan,
    frontier_ids,
    inclusion_plan,
    leaf_hash,
    node_hash,
    root_from,
    root_from_inclusion_proof,
    root_plan,
    verify_consistency,
    verify_inclusion,
)
from tests.unit.merkle_reference import reference_consistency, reference_inclusion, reference_root

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parent.parent / "vectors" / "rfc6962.json").read_text(encoding="utf-8")
)
LEAVES = [bytes.fromhex(h) for h in VECTORS["leaves_hex"]]
ROOTS = {int(size): bytes.fromhex(h) for size, h in VECTORS["roots"].items()}


class Tree:
    """A tree grown the way the sequencer grows it: every completed node goes to a store."""

    def __init__(self, leaves: Sequence[bytes]) -> None:
        self.leaves = list(leaves)
        self.nodes: dict[NodeId, Hash] = {}
        self.roots: list[Hash] = [EMPTY_ROOT]
        frontier = CompactRange.empty()
        for data in leaves:
            self.nodes.update(frontier.append(leaf_hash(data)))
            self.roots.append(frontier.root())
        self.frontier = frontier

    def fetch(self, ids: Sequence[NodeId]) -> list[Hash]:
        return [self.nodes[node] for node in ids]

    def inclusion(self, index: int, size: int) -> list[Hash]:
        plan = inclusion_plan(index, size)
        return assemble(plan, self.fetch(plan.ids))

    def consistency(self, size1: int, size2: int) -> list[Hash]:
        plan = consistency_plan(size1, size2)
        return assemble(plan, self.fetch(plan.ids))

    def root(self, size: int) -> Hash:
        return root_from(self.fetch(root_plan(size)))


def distinct_leaves(count: int, salt: bytes = b"") -> list[bytes]:
    """Leaves that all differ, so no two subtrees share a hash and every tampering shows."""
    return [salt + i.to_bytes(4, "big") for i in range(count)]


VECTOR_TREE = Tree(LEAVES)


# --- known answers ----------------------------------------------------------------------


def test_hashing_vectors() -> None:
    hashing = VECTORS["hashing"]
    assert EMPTY_ROOT.hex() == hashing["empty_tree_root"]
    assert leaf_hash(b"").hex() == hashing["empty_leaf_hash"]
    assert leaf_hash(b"L123456").hex() == hashing["leaf_hash_of_ascii_L123456"]
    assert node_hash(b"N123", b"N456").hex() == hashing["node_hash_of_ascii_N123_N456"]


def test_chain_hash_links_previous_and_leaf() -> None:
    assert GENESIS_CHAIN == bytes(32)
    first = chain_hash(GENESIS_CHAIN, leaf_hash(LEAVES[0]))
    assert first == sha256(bytes(32) + leaf_hash(LEAVES[0])).digest()
    assert chain_hash(first, leaf_hash(LEAVES[1])) == sha256(first + leaf_hash(LEAVES[1])).digest()


@pytest.mark.parametrize("size", sorted(ROOTS))
def test_vector_roots(size: int) -> None:
    assert reference_root(LEAVES[:size]) == ROOTS[size]
    assert VECTOR_TREE.roots[size] == ROOTS[size]  # CompactRange.root after each append
    assert VECTOR_TREE.root(size) == ROOTS[size]  # root_plan + stored nodes + root_from


def test_empty_tree() -> None:
    assert reference_root([]) == EMPTY_ROOT
    assert CompactRange.empty().root() == EMPTY_ROOT
    assert root_plan(0) == ()
    assert root_from([]) == EMPTY_ROOT


@pytest.mark.parametrize("case", VECTORS["inclusion"], ids=lambda c: f"{c['index']}@{c['tree_size']}")
def test_inclusion_vectors(case: dict[str, Any]) -> None:
    index, size = case["index"], case["tree_size"]
    path = [bytes.fromhex(h) for h in case["path"]]
    assert reference_inclusion(LEAVES[:size], index) == path
    assert VECTOR_TREE.inclusion(index, size) == path
    leaf = leaf_hash(LEAVES[index])
    assert root_from_inclusion_proof(leaf, index, size, path) == ROOTS[size]
    verify_inclusion(leaf, index, size, path, ROOTS[size])


@pytest.mark.parametrize("case", VECTORS["consistency"], ids=lambda c: f"{c['first']}-{c['second']}")
def test_consistency_vectors(case: dict[str, Any]) -> None:
    size1, size2 = case["first"], case["second"]
    proof = [bytes.fromhex(h) for h in case["proof"]]
    assert reference_consistency(LEAVES[:size2], size1) == proof
    assert VECTOR_TREE.consistency(size1, size2) == proof
    verify_consistency(size1, size2, proof, ROOTS[size1], ROOTS[size2])


# --- the compact range --------------------------------------------------------------------


def test_frontier_ids_examples() -> None:
    assert frontier_ids(0) == []
    assert frontier_ids(1) == [(0, 0)]
    assert frontier_ids(6) == [(2, 0), (1, 2)]
    assert frontier_ids(7) == [(2, 0), (1, 2), (0, 6)]
    assert frontier_ids(8) == [(3, 0)]
    assert frontier_ids(13) == [(3, 0), (2, 2), (0, 12)]


def test_append_returns_completed_nodes_bottom_up() -> None:
    frontier = CompactRange.from_nodes(7, VECTOR_TREE.fetch(frontier_ids(7)))
    completed = frontier.append(leaf_hash(LEAVES[7]))
    assert [node for node, _ in completed] == [(0, 7), (1, 3), (2, 1), (3, 0)]
    assert completed[-1][1] == ROOTS[8]
    assert CompactRange.empty().append(leaf_hash(b"x")) == [((0, 0), leaf_hash(b"x"))]


@pytest.mark.parametrize("size", range(0, 70))
def test_from_nodes_round_trip(size: int) -> None:
    leaves = distinct_leaves(80)
    grown = Tree(leaves[:size]).frontier
    resumed = CompactRange.from_nodes(size, Tree(leaves).fetch(frontier_ids(size)))
    assert resumed == grown
    resumed.copy().append(leaf_hash(b"not kept"))
    assert resumed == grown
    assert resumed.root() == reference_root(leaves[:size])
    for data in leaves[size:]:
        assert resumed.append(leaf_hash(data)) == grown.append(leaf_hash(data))
    assert resumed.root() == reference_root(leaves)


def test_from_nodes_rejects_stored_hashes_that_do_not_fit() -> None:
    hashes = VECTOR_TREE.fetch(frontier_ids(7))
    with pytest.raises(CompactRangeError) as missing:
        CompactRange.from_nodes(7, hashes[:2])
    assert (missing.value.size, missing.value.expected, missing.value.got) == (7, 3, 2)
    with pytest.raises(CompactRangeError):
        CompactRange.from_nodes(6, hashes)
    with pytest.raises(CompactRangeError):
        CompactRange.from_nodes(7, [*hashes[:2], hashes[2][:31]])
    with pytest.raises(CompactRangeError):
        CompactRange.from_nodes(-1, [])
    with pytest.raises(ProofShapeError):
        CompactRange.empty().append(b"short")


# --- every size, every proof, against the naive definitions ----------------------------------


def _check_plan_nodes_are_stored_at(plan: ProofPlan, size: int) -> None:
    for level, index in plan.ids:
        assert level >= 0 and (index + 1) << level <= size, (level, index, size)


@pytest.mark.parametrize("size", range(1, 41))
def test_every_proof_of_small_trees_matches_reference(size: int) -> None:
    leaves = distinct_leaves(size)
    tree = Tree(leaves)
    root = tree.roots[size]
    assert root == reference_root(leaves)
    for index in range(size):
        plan = inclusion_plan(index, size)
        _check_plan_nodes_are_stored_at(plan, size)
        proof = tree.inclusion(index, size)
        assert proof == reference_inclusion(leaves, index)
        assert plan.proof_length == len(proof)
        verify_inclusion(leaf_hash(leaves[index]), index, size, proof, root)
    for size1 in range(1, size + 1):
        plan = consistency_plan(size1, size)
        _check_plan_nodes_are_stored_at(plan, size)
        proof = tree.consistency(size1, size)
        assert proof == reference_consistency(leaves, size1)
        assert plan.proof_length == len(proof)
        verify_consistency(size1, size, proof, tree.roots[size1], root)


@settings(deadline=None, max_examples=60)
@given(
    size=st.integers(1, 300),
    extra=st.integers(0, 40),
    salt=st.binary(max_size=4),
    data=st.data(),
)
def test_plans_match_reference_in_a_grown_store(size: int, extra: int, salt: bytes, data: st.DataObject) -> None:
    """Proofs at ``size`` come out right from a store that has grown beyond it."""
    leaves = distinct_leaves(size + extra, salt)
    tree = Tree(leaves)
    prefix = leaves[:size]
    root = reference_root(prefix)
    assert tree.root(size) == root
    index = data.draw(st.integers(0, size - 1), label="index")
    proof = tree.inclusion(index, size)
    assert proof == reference_inclusion(prefix, index)
    verify_inclusion(leaf_hash(leaves[index]), index, size, proof, root)
    size1 = data.draw(st.integers(1, size), label="size1")
    proof = tree.consistency(size1, size)
    assert proof == reference_consistency(prefix, size1)
    verify_consistency(size1, size, proof, tree.roots[size1], root)


@settings(deadline=None, max_examples=40)
@given(size=st.integers(1, 300), salt=st.binary(max_size=4))
def test_every_completed_node_is_its_subtree_root(size: int, salt: bytes) -> None:
    leaves = distinct_leaves(size, salt)
    tree = Tree(leaves)
    assert len(tree.nodes) == 2 * size - size.bit_count()
    for (level, index), value in tree.nodes.items():
        assert value == reference_root(leaves[index << level : (index + 1) << level])


# --- tampered proofs ----------------------------------------------------------------------

Tamper = Callable[[list[Hash]], list[Hash]]


def _tamperings(proof: list[Hash], data: st.DataObject) -> dict[str, tuple[Tamper, type[ProofError]]]:
    """Ways to damage a proof, each with the error it must cause."""
    found: dict[str, tuple[Tamper, type[ProofError]]] = {}
    junk = data.draw(st.binary(min_size=32, max_size=32), label="junk")
    at = data.draw(st.integers(0, len(proof)), label="insert at")
    found["extra hash"] = (lambda p: [*p[:at], junk, *p[at:]], ProofShapeError)
    found["short hash"] = (lambda p: [*p, junk[:31]], ProofShapeError)
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1), label="position")
        byte = data.draw(st.integers(0, 31), label="byte")
        bit = data.draw(st.integers(0, 7), label="bit")

        def flip(p: list[Hash]) -> list[Hash]:
            damaged = bytearray(p[i])
            damaged[byte] ^= 1 << bit
            return [*p[:i], bytes(damaged), *p[i + 1 :]]

        found["flipped bit"] = (flip, RootMismatchError)
        found["missing hash"] = (lambda p: [*p[:i], *p[i + 1 :]], ProofShapeError)
        found["truncated hash"] = (lambda p: [*p[:i], p[i][:31], *p[i + 1 :]], ProofShapeError)
    if len(proof) >= 2:
        i, j = sorted(data.draw(st.lists(st.integers(0, len(proof) - 1), min_size=2, max_size=2, unique=True)))
        found["swapped"] = (lambda p: [*p[:i], p[j], *p[i + 1 : j], p[i], *p[j + 1 :]], RootMismatchError)
    return found


def _must_raise(name: str, error: type[ProofError], verify: Callable[[], None]) -> None:
    try:
        verify()
    except error:
        return
    pytest.fail(f"{name}: the damaged proof verified")


@settings(deadline=None, max_examples=150)
@given(size=st.integers(1, 300), salt=st.binary(max_size=4), data=st.data())
def test_tampered_inclusion_proofs_fail(size: int, salt: bytes, data: st.DataObject) -> None:
    leaves = distinct_leaves(size + 20, salt)
    tree = Tree(leaves)
    index = data.draw(st.integers(0, size - 1), label="index")
    proof = tree.inclusion(index, size)
    leaf, root = leaf_hash(leaves[index]), tree.roots[size]
    verify_inclusion(leaf, index, size, proof, root)

    for name, (tamper, error) in _tamperings(proof, data).items():
        _must_raise(name, error, lambda: verify_inclusion(leaf, index, size, tamper(proof), root))

    with pytest.raises(RootMismatchError) as mismatch:
        verify_inclusion(leaf, index, size, proof, tree.roots[size - 1])
    assert (mismatch.value.expected, mismatch.value.computed) == (tree.roots[size - 1], root)
    other = data.draw(st.integers(0, size + 19).filter(lambda i: i != index), label="other leaf")
    with pytest.raises(RootMismatchError):
        verify_inclusion(leaf_hash(leaves[other]), index, size, proof, root)
    if size > 1:
        wrong_index = data.draw(st.integers(0, size - 1).filter(lambda i: i != index), label="wrong index")
        with pytest.raises(ProofError):
            verify_inclusion(leaf, wrong_index, size, proof, root)
    wrong_size = data.draw(st.integers(index + 1, size + 20).filter(lambda s: s != size), label="wrong size")
    with pytest.raises(ProofError):
        verify_inclusion(leaf, index, wrong_size, proof, tree.roots[wrong_size])


@settings(deadline=None, max_examples=150)
@given(size2=st.integers(2, 300), salt=st.binary(max_size=4), data=st.data())
def test_tampered_consistency_proofs_fail(size2: int, salt: bytes, data: st.DataObject) -> None:
    leaves = distinct_leaves(size2 + 20, salt)
    tree = Tree(leaves)
    size1 = data.draw(st.integers(1, size2 - 1), label="size1")
    proof = tree.consistency(size1, size2)
    root1, root2 = tree.roots[size1], tree.roots[size2]
    verify_consistency(size1, size2, proof, root1, root2)

    for name, (tamper, error) in _tamperings(proof, data).items():
        _must_raise(name, error, lambda: verify_consistency(size1, size2, tamper(proof), root1, root2))

    with pytest.raises(RootMismatchError):
        verify_consistency(size1, size2, proof, tree.roots[size1 - 1], root2)
    with pytest.raises(RootMismatchError):
        verify_consistency(size1, size2, proof, root1, tree.roots[size2 + 1])
    if size2 > 2:
        wrong1 = data.draw(st.integers(1, size2 - 1).filter(lambda s: s != size1), label="wrong size1")
        with pytest.raises(ProofError):
            verify_consistency(wrong1, size2, proof, tree.roots[wrong1], root2)
    wrong2 = data.draw(st.integers(size1 + 1, size2 + 20).filter(lambda s: s != size2), label="wrong size2")
    with pytest.raises(ProofError):
        verify_consistency(size1, wrong2, proof, root1, tree.roots[wrong2])


# --- preconditions --------------------------------------------------------------------------


@pytest.mark.parametrize(("index", "size"), [(-1, 5), (5, 5), (6, 5), (0, 0)])
def test_inclusion_preconditions(index: int, size: int) -> None:
    with pytest.raises(ProofShapeError) as raised:
        inclusion_plan(index, size)
    assert raised.value.facts == {"index": index, "size": size}
    assert isinstance(raised.value, ValueError)
    with pytest.raises(ProofShapeError):
        verify_inclusion(leaf_hash(b""), index, size, [], EMPTY_ROOT)


@pytest.mark.parametrize(("size1", "size2"), [(5, 4), (-1, 3), (1, 0)])
def test_consistency_preconditions(size1: int, size2: int) -> None:
    with pytest.raises(ProofShapeError) as raised:
        consistency_plan(size1, size2)
    assert raised.value.facts == {"size1": size1, "size2": size2}
    with pytest.raises(ProofShapeError):
        verify_consistency(size1, size2, [], EMPTY_ROOT, EMPTY_ROOT)


def test_trivial_consistency() -> None:
    assert consistency_plan(0, 8) == ProofPlan(())
    assert consistency_plan(5, 5) == ProofPlan(())
    verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    verify_consistency(0, 8, [], EMPTY_ROOT, ROOTS[8])
    verify_consistency(8, 8, [], ROOTS[8], ROOTS[8])
    with pytest.raises(RootMismatchError):
        verify_consistency(0, 8, [], ROOTS[1], ROOTS[8])
    with pytest.raises(RootMismatchError) as mismatch:
        verify_consistency(8, 8, [], ROOTS[7], ROOTS[8])
    assert (mismatch.value.expected, mismatch.value.computed) == (ROOTS[8], ROOTS[7])
    with pytest.raises(ProofShapeError):
        verify_consistency(8, 8, [ROOTS[8]], ROOTS[8], ROOTS[8])
    with pytest.raises(ProofShapeError):
        verify_consistency(0, 8, [ROOTS[8]], EMPTY_ROOT, ROOTS[8])
    with pytest.raises(ProofShapeError):
        verify_consistency(7, 8, [], ROOTS[7], ROOTS[8])


def test_wrong_length_hashes_are_shape_errors() -> None:
    path = VECTOR_TREE.inclusion(2, 3)
    with pytest.raises(ProofShapeError):
        verify_inclusion(leaf_hash(LEAVES[2])[:31], 2, 3, path, ROOTS[3])
    with pytest.raises(ProofShapeError):
        verify_inclusion(leaf_hash(LEAVES[2]), 2, 3, path, ROOTS[3] + b"\x00")
    with pytest.raises(ProofShapeError):
        verify_consistency(2, 5, VECTOR_TREE.consistency(2, 5), ROOTS[2][:1], ROOTS[5])


def test_assemble_needs_one_hash_per_node() -> None:
    plan = inclusion_plan(1, 5)
    hashes = VECTOR_TREE.fetch(plan.ids)
    with pytest.raises(ProofShapeError) as raised:
        assemble(plan, hashes[:-1])
    assert raised.value.facts == {"expected": len(plan.ids), "got": len(plan.ids) - 1}


def test_plan_folds_the_right_edge_into_one_node() -> None:
    # Leaf 1 of 7: siblings (0,0) and (1,1), then the right edge [4, 7) = (1,2) + (0,6).
    plan = inclusion_plan(1, 7)
    assert plan == ProofPlan(((0, 0), (1, 1), (1, 2), (0, 6)), 2, 4)
    assert plan.proof_length == 3
    # The 7th leaf of 7: no right edge, left siblings come lowest first.
    assert inclusion_plan(6, 7) == ProofPlan(((1, 2), (2, 0)))
    # From 6 to 7: (1,2) leads (6 is not a power of two), then (0,6) and (2,0).
    assert consistency_plan(6, 7) == ProofPlan(((1, 2), (0, 6), (2, 0)))


@given(st.lists(st.binary(min_size=32, max_size=32), max_size=70), st.integers(min_value=0, max_value=70))
def test_extend_keeps_the_same_frontier_as_appending_one_by_one(leaves: list[bytes], split: int) -> None:
    one_by_one, batched = CompactRange.empty(), CompactRange.empty()
    for leaf in leaves:
        one_by_one.append(leaf)
    batched.extend(leaves[:split])
    batched.extend(leaves[split:])
    assert batched == one_by_one and batched.root() == one_by_one.root()
