"""RFC 6962 / RFC 9162 Merkle tree and hash chain, with no I/O at all.

The ledger stores every *perfect* subtree hash under its NodeId ``(level, index)``:
the node covering leaves ``[index * 2**level, (index + 1) * 2**level)``. Level-0 node
``(0, i)`` is leaf i's leaf hash. Such a node never changes once its last leaf exists.

Proofs are built in three steps, so that this module never touches storage:

1. ``inclusion_plan`` / ``consistency_plan`` / ``root_plan`` say which stored nodes
   are needed (every one is a perfect subtree inside ``[0, size)``, so it is stored
   as soon as the tree has ``size`` leaves, whatever it has grown to since);
2. the caller fetches those hashes;
3. ``assemble`` (or ``root_from``) turns them into the proof (or the root).

Appending works the same way: ``CompactRange.append`` returns the nodes it completed
for the caller to store. Verification follows RFC 9162 §2.1.3.2 and §2.1.4.2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import sha256

Hash = bytes
NodeId = tuple[int, int]
"""(level, index): the perfect subtree over leaves [index * 2**level, (index + 1) * 2**level)."""

HASH_SIZE = 32
EMPTY_ROOT: Hash = sha256(b"").digest()
GENESIS_CHAIN: Hash = bytes(HASH_SIZE)
"""chain[-1]: what the first entry's chain hash is chained onto."""


class ProofError(ValueError):
    """A proof, a plan's arguments or a proof's hashes are wrong."""


class ProofShapeError(ProofError):
    """Arguments or lengths that no valid proof could have; ``facts`` holds the numbers."""

    def __init__(self, reason: str, **facts: int) -> None:
        self.reason = reason
        self.facts = facts
        detail = ", ".join(f"{key}={value}" for key, value in facts.items())
        super().__init__(f"{reason} ({detail})" if detail else reason)


class RootMismatchError(ProofError):
    """The proof is well formed but leads to a different root than the one trusted."""

    def __init__(self, expected: Hash, computed: Hash) -> None:
        self.expected = expected
        self.computed = computed
        super().__init__(f"computed root {computed.hex()} does not match expected {expected.hex()}")


class CompactRangeError(ValueError):
    """Stored frontier hashes do not fit the tree size (a storage fault, not a client error)."""

    def __init__(self, size: int, expected: int, got: int) -> None:
        self.size = size
        self.expected = expected
        self.got = got
        super().__init__(f"tree size {size} needs {expected} frontier hashes of {HASH_SIZE} bytes, got {got}")


def leaf_hash(data: bytes) -> Hash:
    """RFC 6962 leaf hash; the 0x00 prefix keeps leaves apart from interior nodes."""
    return sha256(b"\x00" + data).digest()


def node_hash(left: Hash, right: Hash) -> Hash:
    """RFC 6962 interior node hash; the 0x01 prefix keeps nodes apart from leaves."""
    return sha256(b"\x01" + left + right).digest()


def chain_hash(previous: Hash, leaf: Hash) -> Hash:
    """Next link of the entry hash chain: SHA-256(previous || leaf); start from GENESIS_CHAIN."""
    return sha256(previous + leaf).digest()


def _decompose(start: int, count: int) -> list[NodeId]:
    """Perfect subtrees covering [start, start + count), left to right (largest first).

    Precondition: ``start`` is a multiple of a power of two larger than ``count`` (true for
    0 and for the end of a left child whose right sibling is cut by the tree size), so the
    cover is one node per set bit of ``count``.
    """
    ids: list[NodeId] = []
    for level in range(count.bit_length() - 1, -1, -1):
        if count >> level & 1:
            ids.append((level, start >> level))
            start += 1 << level
    return ids


def frontier_ids(size: int) -> list[NodeId]:
    """Perfect subtrees that decompose [0, size), left to right (largest first)."""
    if size < 0:
        raise ProofShapeError("tree size must not be negative", size=size)
    return _decompose(0, size)


def root_plan(size: int) -> tuple[NodeId, ...]:
    """Stored nodes whose hashes, in this order, ``root_from`` folds into the root of ``size``."""
    return tuple(frontier_ids(size))


def root_from(hashes: Sequence[Hash]) -> Hash:
    """Fold frontier hashes (left to right, largest first) right-to-left into their root.

    The empty frontier is the empty tree.
    """
    if not hashes:
        return EMPTY_ROOT
    root = hashes[-1]
    for left in reversed(hashes[:-1]):
        root = node_hash(left, root)
    return root


@dataclass
class CompactRange:
    """The right frontier of a tree of ``size`` leaves: the hashes of ``frontier_ids(size)``.

    It is all the sequencer needs in memory to extend the tree and compute its root:
    one hash per set bit of ``size``, left (largest subtree) to right.
    """

    size: int
    hashes: list[Hash]

    def __post_init__(self) -> None:
        expected = self.size.bit_count() if self.size >= 0 else -1
        if len(self.hashes) != expected or any(len(h) != HASH_SIZE for h in self.hashes):
            raise CompactRangeError(self.size, expected, len(self.hashes))

    @classmethod
    def empty(cls) -> CompactRange:
        """The frontier of the empty tree."""
        return cls(0, [])

    @classmethod
    def from_nodes(cls, size: int, hashes: Sequence[Hash]) -> CompactRange:
        """Resume from stored nodes: ``hashes`` are those of ``frontier_ids(size)``, in order.

        Raises CompactRangeError if the count or a hash length does not fit ``size``.
        """
        return cls(size, list(hashes))

    def copy(self) -> CompactRange:
        """An independent copy (``copy.copy`` would share the ``hashes`` list)."""
        return CompactRange(self.size, list(self.hashes))

    def append(self, leaf: Hash) -> list[tuple[NodeId, Hash]]:
        """Add leaf hash number ``size``; return every node this completed, bottom-up.

        The first is ``(0, index)`` (the leaf itself); each next one is its parent, for as
        long as the new node is a right child. The caller stores them all.
        """
        if len(leaf) != HASH_SIZE:
            raise ProofShapeError("leaf hash has the wrong length", length=len(leaf), expected=HASH_SIZE)
        index = self.size
        completed: list[tuple[NodeId, Hash]] = [((0, index), leaf)]
        node, level = leaf, 0
        while index & 1:
            node = node_hash(self.hashes.pop(), node)
            level += 1
            index >>= 1
            completed.append(((level, index), node))
        self.hashes.append(node)
        self.size += 1
        return completed

    def extend(self, leaves: Sequence[Hash]) -> None:
        """Append many leaf hashes, keeping only the frontier: ``append``
        without the completed nodes, for replays that store none (auditors).
        Precondition: every leaf is HASH_SIZE bytes."""
        hashes, size = self.hashes, self.size
        for leaf in leaves:
            node, index = leaf, size
            while index & 1:
                node = sha256(b"\x01" + hashes.pop() + node).digest()
                index >>= 1
            hashes.append(node)
            size += 1
        self.size = size

    def root(self) -> Hash:
        """Root of the tree of ``size`` leaves; EMPTY_ROOT for size 0."""
        return root_from(self.hashes)


@dataclass(frozen=True)
class ProofPlan:
    """Which stored perfect nodes a proof needs, and how to turn their hashes into it.

    If ``end > begin``, ``ids[begin:end]`` (at least two) are the perfect subtrees, left to
    right, under the tree's non-perfect right edge; ``assemble`` folds them right-to-left,
    as ``root_from`` does, into ONE ephemeral node that takes position ``begin`` in the
    proof. Otherwise ``begin == end == 0`` and the proof is the hashes of ``ids`` as they are.
    """

    ids: tuple[NodeId, ...]
    begin: int = 0
    end: int = 0

    @property
    def proof_length(self) -> int:
        """Number of hashes in the assembled proof."""
        return len(self.ids) - max(0, self.end - self.begin - 1)


def _audit_plan(level: int, index: int, size: int) -> ProofPlan:
    """Nodes proving that stored node (level, index) is in the tree of ``size`` leaves.

    Precondition: the node lies inside [0, size). The path climbs to ``fork``, the node's
    highest ancestor still inside [0, size): below it every sibling is a stored node;
    its right neighbour, if any leaves remain, is the ephemeral right edge; above it
    every sibling is a whole perfect subtree on the left. Order is bottom-up.
    """
    height = (index ^ (size >> level)).bit_length() - 1
    fork_level = level + height
    fork_begin = (index >> height) << fork_level
    fork_end = fork_begin + (1 << fork_level)
    ids = [(lvl, (index >> (lvl - level)) ^ 1) for lvl in range(level, fork_level)]
    begin = len(ids)
    ids.extend(_decompose(fork_end, size - fork_end))
    end = len(ids)
    ids.extend(reversed(_decompose(0, fork_begin)))
    if end - begin <= 1:  # nothing to fold: a lone right-edge node is stored as it is
        begin = end = 0
    return ProofPlan(tuple(ids), begin, end)


def inclusion_plan(index: int, size: int) -> ProofPlan:
    """Nodes for the audit path of leaf ``index`` in the tree of ``size`` leaves.

    Precondition: 0 <= index < size, else ProofShapeError.
    """
    if not 0 <= index < size:
        raise ProofShapeError("leaf index must satisfy 0 <= index < size", index=index, size=size)
    return _audit_plan(0, index, size)


def consistency_plan(size1: int, size2: int) -> ProofPlan:
    """Nodes for the RFC 9162 consistency proof from ``size1`` to ``size2`` leaves.

    Precondition: 0 <= size1 <= size2, else ProofShapeError. From the empty tree, or
    between equal sizes, the proof is empty.
    """
    if not 0 <= size1 <= size2:
        raise ProofShapeError("tree sizes must satisfy 0 <= size1 <= size2", size1=size1, size2=size2)
    if size1 == 0 or size1 == size2:
        return ProofPlan(())
    # The proof is the inclusion path, in the bigger tree, of the smallest subtree on the
    # right edge of the smaller tree, led by that subtree itself unless it IS the smaller
    # tree (then the verifier already holds it as root1).
    level = (size1 & -size1).bit_length() - 1
    index = (size1 >> level) - 1
    path = _audit_plan(level, index, size2)
    if size1 == 1 << level:
        return path
    shift = 1 if path.end > path.begin else 0
    return ProofPlan(((level, index), *path.ids), path.begin + shift, path.end + shift)


def assemble(plan: ProofPlan, hashes: Sequence[Hash]) -> list[Hash]:
    """The proof from the fetched hashes: ``hashes[i]`` is the hash of ``plan.ids[i]``.

    Inclusion proofs come out bottom-up (the audit path); consistency proofs in RFC 9162
    order. Raises ProofShapeError if the counts differ.
    """
    if len(hashes) != len(plan.ids):
        raise ProofShapeError("one hash per planned node is needed", expected=len(plan.ids), got=len(hashes))
    if plan.end == plan.begin:
        return list(hashes)
    ephemeral = root_from(hashes[plan.begin : plan.end])
    return [*hashes[: plan.begin], ephemeral, *hashes[plan.end :]]


def _check_hashes(**named: Hash) -> None:
    for name, value in named.items():
        if len(value) != HASH_SIZE:
            raise ProofShapeError(f"{name} has the wrong length", length=len(value), expected=HASH_SIZE)


def _check_proof(proof: Sequence[Hash], expected: int) -> None:
    if len(proof) != expected:
        raise ProofShapeError("proof has the wrong number of hashes", expected=expected, got=len(proof))
    for position, value in enumerate(proof):
        if len(value) != HASH_SIZE:
            raise ProofShapeError("proof hash has the wrong length", position=position, length=len(value))


def root_from_inclusion_proof(leaf: Hash, index: int, size: int, proof: Sequence[Hash]) -> Hash:
    """The root that ``proof`` implies for leaf hash ``leaf`` at ``index`` in a tree of ``size``.

    RFC 9162 §2.1.3.2, with the length checked up front (the RFC's ``sn == 0`` checks are
    equivalent). Raises ProofShapeError unless 0 <= index < size and the length is right.
    """
    _check_hashes(leaf=leaf)
    _check_proof(proof, inclusion_plan(index, size).proof_length)
    fn, sn, node = index, size - 1, leaf
    for sibling in proof:
        if fn & 1 or fn == sn:
            node = node_hash(sibling, node)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            node = node_hash(node, sibling)
        fn >>= 1
        sn >>= 1
    return node


def verify_inclusion(leaf: Hash, index: int, size: int, proof: Sequence[Hash], root: Hash) -> None:
    """Check that leaf hash ``leaf`` is entry ``index`` of the tree of ``size`` with ``root``.

    Raises ProofShapeError (bad arguments or length) or RootMismatchError.
    """
    _check_hashes(root=root)
    computed = root_from_inclusion_proof(leaf, index, size, proof)
    if computed != root:
        raise RootMismatchError(expected=root, computed=computed)


def verify_consistency(size1: int, size2: int, proof: Sequence[Hash], root1: Hash, root2: Hash) -> None:
    """Check that the tree of ``size2`` with ``root2`` extends the tree of ``size1`` with ``root1``.

    RFC 9162 §2.1.4.2, with the length checked up front. Precondition 0 <= size1 <= size2.
    Equal sizes need an empty proof and equal roots; size1 == 0 needs an empty proof and
    root1 == EMPTY_ROOT (every tree extends the empty one). Raises ProofShapeError or
    RootMismatchError (``expected`` is the trusted root that did not match).
    """
    _check_hashes(root1=root1, root2=root2)
    _check_proof(proof, consistency_plan(size1, size2).proof_length)
    if size1 == 0:
        if root1 != EMPTY_ROOT:
            raise RootMismatchError(expected=root1, computed=EMPTY_ROOT)
        return
    if size1 == size2:
        if root1 != root2:
            raise RootMismatchError(expected=root2, computed=root1)
        return
    path = [root1, *proof] if size1 & (size1 - 1) == 0 else list(proof)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    first = second = path[0]
    for node in path[1:]:
        if fn & 1 or fn == sn:
            first = node_hash(node, first)
            second = node_hash(node, second)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            second = node_hash(second, node)
        fn >>= 1
        sn >>= 1
    if first != root1:
        raise RootMismatchError(expected=root1, computed=first)
    if second != root2:
        raise RootMismatchError(expected=root2, computed=second)
