"""The auditor's log checks, with no I/O: every entry's leaf hash, its place in
the hash chain and its index; the RFC 6962 tree recomputed from the event
bytes; every stored checkpoint's signature, its root and chain head against
that recomputation, and served proofs against signed roots.

Nothing here stops at the first problem: each one becomes a ``Finding`` that
says where it is (entry index, checkpoint size, the checkpoint interval the
tampering lies in), what was expected and what was found, so a report locates
tampering instead of saying only "root differs". Damage that shifts
everything after it (a deleted row, a rewritten entry under later
checkpoints) is reported once where it starts, with a count of what follows.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Iterable, Protocol, Sequence

from medledger.ledger import merkle, note

# The names of the checks, as reports and --json show them.
INDEX = "index"
LEAF_HASH = "leaf hash"
CHAIN_HASH = "chain hash"
CHECKPOINT_SIGNATURE = "checkpoint signature"
CHECKPOINT_ROOT = "checkpoint root"
CHECKPOINT_CHAIN = "checkpoint chain head"
CHECKPOINT_ORDER = "checkpoint order"
CHECKPOINT_MISSING_ENTRIES = "checkpoint beyond entries"
CONSISTENCY_PROOF = "consistency proof"
INCLUSION_PROOF = "inclusion proof"
STATE = "remembered checkpoint"
ENVELOPE = "envelope"
PRODUCER_SIGNATURE = "producer signature"
CONSENT_SIGNATURE = "consent signature"
APPOINTMENT_SIGNATURE = "appointment signature"
RECORD_SIGNATURE = "record signature"
ERASURE_SIGNATURE = "erasure signature"

MAX_FINDINGS = 1000
"""Findings kept in a report; more are counted, not listed."""


@dataclass(frozen=True)
class Finding:
    """One thing that does not verify, and where."""

    check: str
    index: int | None = None
    checkpoint: int | None = None
    expected: str = ""
    found: str = ""
    detail: str = ""
    # First and last entry index the problem lies in, when it can be located
    # to a checkpoint interval.
    entries: tuple[int, int] | None = None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"check": self.check}
        for name in ("index", "checkpoint", "expected", "found", "detail"):
            value = getattr(self, name)
            if value not in (None, ""):
                out[name] = value
        if self.entries is not None:
            out["entries"] = list(self.entries)
        return out

    def describe(self) -> str:
        where = []
        if self.index is not None:
            where.append(f"entry {self.index}")
        if self.checkpoint is not None:
            where.append(f"checkpoint {self.checkpoint}")
        if self.entries is not None:
            where.append(f"in entries {self.entries[0]}..{self.entries[1]}")
        text = f"{self.check}" + (f" at {', '.join(where)}" if where else "")
        if self.expected or self.found:
            text += f": expected {self.expected or '-'}, found {self.found or '-'}"
        if self.detail:
            text += f" ({self.detail})"
        return text


@dataclass
class Findings:
    """What a run found, the first MAX_FINDINGS of them in full."""

    items: list[Finding] = field(default_factory=list)
    total: int = 0

    def add(self, finding: Finding) -> None:
        self.total += 1
        if len(self.items) < MAX_FINDINGS:
            self.items.append(finding)

    def add_if(self, finding: Finding | None) -> None:
        if finding is not None:
            self.add(finding)

    def extend(self, findings: Iterable[Finding]) -> None:
        for finding in findings:
            self.add(finding)

    def __bool__(self) -> bool:
        return self.total > 0

    def sorted(self) -> list[Finding]:
        """In log order: entry findings by index, checkpoint findings by size."""
        def key(f: Finding) -> tuple[int, int]:
            at = f.index if f.index is not None else f.checkpoint if f.checkpoint is not None else -1
            return (at, 0 if f.index is not None else 1)

        return sorted(self.items, key=key)


class EntryLike(Protocol):
    """A ledger entry as GetEntryPages and ledger.entries carry it."""

    @property
    def index(self) -> int: ...
    @property
    def event(self) -> bytes: ...
    @property
    def leaf_hash(self) -> bytes: ...
    @property
    def chain_hash(self) -> bytes: ...


def short(value: bytes) -> str:
    """A hash as reports show it."""
    return value.hex()[:16] + "…" if len(value) > 8 else value.hex()


class TreeReplay:
    """Rebuilds the log from entries in order. Each entry's stored leaf hash
    must be the hash of its bytes, and its stored chain hash must follow from
    the stored previous one (so a damaged row is reported where it is, not at
    every row after it). The tree and the chain the checkpoints are compared
    with are recomputed from the event bytes alone."""

    def __init__(self) -> None:
        self.tree = merkle.CompactRange.empty()
        self.chain = merkle.GENESIS_CHAIN  # recomputed from the event bytes
        self.expected_index = 0
        self._stored_chain = merkle.GENESIS_CHAIN

    @property
    def size(self) -> int:
        return self.tree.size

    def add(self, entries: Iterable[EntryLike], findings: Findings) -> None:
        """Append entries (hot path: one call per page)."""
        hasher = sha256
        leaves: list[bytes] = []
        append = leaves.append
        chain, stored_chain, expected = self.chain, self._stored_chain, self.expected_index
        for entry in entries:
            index, event, leaf, stored = entry.index, entry.event, entry.leaf_hash, entry.chain_hash
            if index != expected:
                detail = f"entries {expected}..{index - 1} missing" if index > expected else "out of order or repeated"
                findings.add(Finding(INDEX, index=expected, expected=str(expected), found=str(index), detail=detail))
            expected = index + 1
            computed = hasher(b"\x00" + event).digest()
            if computed != leaf:
                findings.add(Finding(LEAF_HASH, index=index, expected=short(computed), found=short(leaf),
                                     detail="the stored leaf hash is not the hash of the stored event bytes"))
            follows = hasher(stored_chain + leaf).digest()
            if follows != stored:
                findings.add(Finding(CHAIN_HASH, index=index, expected=short(follows), found=short(stored),
                                     detail="does not follow from the previous entry's chain hash"))
            stored_chain = stored
            chain = hasher(chain + computed).digest()
            append(computed)
        self.tree.extend(leaves)
        self.chain, self._stored_chain, self.expected_index = chain, stored_chain, expected


@dataclass(frozen=True)
class ListedCheckpoint:
    """A stored checkpoint as the ledger lists it: the signed note and the
    unsigned values stored beside it."""

    tree_size: int
    note: bytes
    chain_hash: bytes = b""


@dataclass(frozen=True)
class VerifiedCheckpoint:
    """A checkpoint whose signature verified and whose root is the recomputed one."""

    size: int
    root: bytes
    note: bytes


class LogVerification:
    """Entries in index order and the stored checkpoints, checked together.

    Feed pages with ``add``; each checkpoint is checked when the recomputed
    tree reaches its size. ``finish`` reports checkpoints the entries never
    reached. A root that differs is located to the interval since the last
    checkpoint that matched; later checkpoints that differ because of the
    same damage are counted, not listed.
    """

    def __init__(
        self,
        verifier: note.NoteVerifier,
        origin: str | None,
        checkpoints: Sequence[ListedCheckpoint],
        remember: Iterable[int] = (),
    ) -> None:
        """``remember``: tree sizes whose recomputed root ``roots`` should keep
        (the checkpoint an auditor verified last time)."""
        self.verifier = verifier
        self.origin = origin
        self.checkpoints = list(checkpoints)
        self.sizes = [c.tree_size for c in self.checkpoints]
        self.replay = TreeReplay()
        self.findings = Findings()
        self.verified: list[VerifiedCheckpoint] = []
        self.roots: dict[int, bytes] = {}
        self._stops = sorted(set(self.sizes) | set(remember))
        self._next_stop = 0
        self._next = 0
        self._last_matching = 0
        self._cascade = 0
        self._check_order()
        self._check_due()

    def _check_order(self) -> None:
        for previous, current in zip(self.sizes, self.sizes[1:]):
            if current <= previous:
                self.findings.add(Finding(CHECKPOINT_ORDER, checkpoint=current,
                                          detail=f"listed after checkpoint {previous}"))

    def add(self, entries: Sequence[EntryLike]) -> None:
        """The next entries, in the order served (one page at a time)."""
        position = 0
        while position < len(entries):
            stop = self._stops[self._next_stop] if self._next_stop < len(self._stops) else None
            room = len(entries) - position if stop is None else max(stop - self.replay.size, 1)
            take = min(room, len(entries) - position)
            self.replay.add(entries[position : position + take], self.findings)
            position += take
            self._check_due()

    def _check_due(self) -> None:
        size = self.replay.size
        while self._next_stop < len(self._stops) and self._stops[self._next_stop] <= size:
            if self._stops[self._next_stop] == size:
                self.roots[size] = self.replay.tree.root()
            self._next_stop += 1
        while self._next < len(self.checkpoints) and self.checkpoints[self._next].tree_size <= size:
            self._check(self.checkpoints[self._next])
            self._next += 1

    def _check(self, listed: ListedCheckpoint) -> None:
        try:
            cp = note.open_checkpoint(listed.note, self.verifier, origin=self.origin)
        except note.NoteError as exc:
            self.findings.add(Finding(CHECKPOINT_SIGNATURE, checkpoint=listed.tree_size,
                                      expected=f"signed by {self.verifier.name}", found=exc.reason))
            return
        if cp.size != listed.tree_size:
            self.findings.add(Finding(CHECKPOINT_SIGNATURE, checkpoint=listed.tree_size, expected=str(listed.tree_size),
                                      found=str(cp.size), detail="the signed size differs from the stored one"))
            return
        if cp.size != self.replay.size:
            return  # stored out of order: reported by _check_order
        root = self.roots[cp.size]
        if cp.root != root:
            if self._cascade == 0:
                first = self._last_matching
                self.findings.add(Finding(
                    CHECKPOINT_ROOT, checkpoint=cp.size, expected=short(root), found=short(cp.root),
                    entries=(first, cp.size - 1),
                    detail=f"the entries since checkpoint {first} are not the ones this checkpoint signed",
                ))
            self._cascade += 1
            return
        if self._cascade > 1:
            self.findings.add(Finding(CHECKPOINT_ROOT, checkpoint=cp.size,
                                      detail=f"{self._cascade - 1} more checkpoints before this one differ too"))
        self._cascade = 0
        self._last_matching = cp.size
        if listed.chain_hash and listed.chain_hash != self.replay.chain:
            self.findings.add(Finding(CHECKPOINT_CHAIN, checkpoint=cp.size, expected=short(self.replay.chain),
                                      found=short(listed.chain_hash)))
        self.verified.append(VerifiedCheckpoint(cp.size, cp.root, listed.note))

    def finish(self) -> None:
        if self._cascade > 1:
            self.findings.add(Finding(CHECKPOINT_ROOT, checkpoint=self.sizes[self._next - 1],
                                      detail=f"{self._cascade - 1} later checkpoints differ too"))
        for listed in self.checkpoints[self._next :]:
            self.findings.add(Finding(
                CHECKPOINT_MISSING_ENTRIES, checkpoint=listed.tree_size, expected=f"{listed.tree_size} entries",
                found=f"{self.replay.size} entries", detail="entries the checkpoint covers were not served",
            ))

    def interval_of(self, index: int) -> tuple[int, int] | None:
        """The checkpoint interval [previous size, size - 1] holding an index."""
        position = bisect.bisect_right(self.sizes, index)
        if position >= len(self.sizes):
            return None
        start = self.sizes[position - 1] if position else 0
        return (start, self.sizes[position] - 1)

    @property
    def latest(self) -> VerifiedCheckpoint | None:
        return self.verified[-1] if self.verified else None


def check_consistency_proof(
    first: VerifiedCheckpoint, second: VerifiedCheckpoint, proof: Sequence[bytes], check: str = CONSISTENCY_PROOF
) -> Finding | None:
    """A served consistency proof between two verified checkpoints. A proof
    that fails means the ledger serves proofs from damaged tree nodes (or two
    trees that do not extend each other); the nodes it was built from are named."""
    try:
        merkle.verify_consistency(first.size, second.size, list(proof), first.root, second.root)
    except merkle.ProofError as exc:
        nodes = merkle.consistency_plan(first.size, second.size).ids
        return Finding(check, checkpoint=second.size, expected=f"a proof from {first.size} to {second.size}",
                       found=str(exc), entries=(first.size, second.size - 1) if second.size > first.size else None,
                       detail=f"served from tree nodes {_nodes(nodes)}")
    return None


def check_inclusion_proof(index: int, leaf: bytes, checkpoint: VerifiedCheckpoint, proof: Sequence[bytes]) -> Finding | None:
    """A served inclusion proof of a recomputed leaf against a verified checkpoint."""
    try:
        merkle.verify_inclusion(leaf, index, checkpoint.size, list(proof), checkpoint.root)
    except merkle.ProofError as exc:
        nodes = merkle.inclusion_plan(index, checkpoint.size).ids
        return Finding(INCLUSION_PROOF, index=index, checkpoint=checkpoint.size,
                       expected=f"a path to the root of checkpoint {checkpoint.size}", found=str(exc),
                       detail=f"served from tree nodes {_nodes(nodes)}")
    return None


def _nodes(ids: Sequence[merkle.NodeId]) -> str:
    return ", ".join(f"(level {level}, index {index})" for level, index in ids)
