"""Verify a ledger end to end, trusting nothing but the verifier key.

Pure: feed it entries in index order and signed checkpoints; it recomputes
every leaf hash, the hash chain and the RFC 6962 root, and checks each
checkpoint's signature and that it matches the recomputed tree at its size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from medledger.ledger import merkle, note


class AuditFailure(Exception):
    """The log does not verify; says where and why."""

    def __init__(self, reason: str, index: int | None = None) -> None:
        super().__init__(reason if index is None else f"entry {index}: {reason}")
        self.index = index


@dataclass
class LogAuditor:
    """Feed entries with ``add`` in index order; ``check`` signed checkpoints at
    any time (each must describe the tree as recomputed so far or earlier)."""

    verifier: note.NoteVerifier
    origin: str | None = None
    tree: merkle.CompactRange = field(default_factory=merkle.CompactRange.empty)
    chain: bytes = merkle.GENESIS_CHAIN
    roots: dict[int, bytes] = field(default_factory=dict)
    checked: int = 0

    def add(self, index: int, event: bytes, leaf_hash: bytes, chain_hash: bytes) -> None:
        if index != self.tree.size:
            raise AuditFailure(f"expected index {self.tree.size}, got {index} (gap or reorder)", index)
        computed_leaf = merkle.leaf_hash(event)
        if computed_leaf != leaf_hash:
            raise AuditFailure("leaf hash does not match the event bytes", index)
        computed_chain = merkle.chain_hash(self.chain, computed_leaf)
        if computed_chain != chain_hash:
            raise AuditFailure("chain hash does not follow from the previous entry", index)
        self.chain = computed_chain
        self.tree.append(computed_leaf)

    def remember_root(self) -> None:
        self.roots[self.tree.size] = self.tree.root()

    def check(self, signed_note: bytes) -> note.Checkpoint:
        """Verify the signature and that the checkpoint's root is the one
        recomputed at its size (the size must be the current one or remembered)."""
        try:
            cp = note.open_checkpoint(signed_note, self.verifier, origin=self.origin)
        except note.NoteError as exc:
            raise AuditFailure(f"checkpoint signature or format invalid: {exc}") from None
        if cp.size == self.tree.size:
            expected = self.tree.root()
        elif cp.size in self.roots:
            expected = self.roots[cp.size]
        else:
            raise AuditFailure(f"checkpoint of size {cp.size} but {self.tree.size} entries were replayed")
        if cp.root != expected:
            raise AuditFailure(
                f"checkpoint root {cp.root.hex()} at size {cp.size} differs from recomputed {expected.hex()}"
            )
        self.checked += 1
        return cp


def verify_entries(
    entries: Iterable[tuple[int, bytes, bytes, bytes]], signed_note: bytes, verifier: note.NoteVerifier
) -> note.Checkpoint:
    """Replay (index, event, leaf_hash, chain_hash) from 0 and check the final
    checkpoint against the recomputed root."""
    auditor = LogAuditor(verifier)
    cp = note.open_checkpoint(signed_note, verifier)
    for index, event, leaf, chain in entries:
        if index >= cp.size:
            break
        auditor.add(index, event, leaf, chain)
    return auditor.check(signed_note)
