"""A strict auditor for tests and helpers: the same per-entry checks as a
full audit (checks.TreeReplay), raising at the first problem instead of
reporting every one. ``medledger audit verify`` uses pipeline.run, which
reports and locates everything.

Pure: feed it entries in index order and signed checkpoints; it recomputes
every leaf hash, the hash chain and the RFC 6962 root, and checks each
checkpoint's signature and that it matches the recomputed tree at its size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from medledger.audit.checks import Findings, TreeReplay
from medledger.ledger import merkle, note


class AuditFailure(Exception):
    """The log does not verify; says where and why."""

    def __init__(self, reason: str, index: int | None = None) -> None:
        super().__init__(reason)
        self.index = index


@dataclass(frozen=True)
class _Entry:
    index: int
    event: bytes
    leaf_hash: bytes
    chain_hash: bytes


@dataclass
class LogAuditor:
    """Feed entries with ``add`` in index order; ``check`` signed checkpoints at
    any time (each must describe the tree as recomputed so far or earlier)."""

    verifier: note.NoteVerifier
    origin: str | None = None
    replay: TreeReplay = field(default_factory=TreeReplay)
    roots: dict[int, bytes] = field(default_factory=dict)
    checked: int = 0

    @property
    def tree(self) -> merkle.CompactRange:
        return self.replay.tree

    def add(self, index: int, event: bytes, leaf_hash: bytes, chain_hash: bytes) -> None:
        findings = Findings()
        self.replay.add([_Entry(index, event, leaf_hash, chain_hash)], findings)
        if findings:
            raise AuditFailure(findings.items[0].describe(), index)

    def remember_root(self) -> None:
        self.roots[self.tree.size] = self.tree.root()

    def check(self, signed_note: bytes) -> note.Checkpoint:
        """Verify the signature and that the checkpoint's root is the one
        recomputed at its size (the size must be the current one or remembered)."""
        try:
            cp = note.open_checkpoint(signed_note, self.verifier, origin=self.origin)
        except note.NoteError as exc:
            raise AuditFailure(f"checkpoint signature or format invalid: {exc}") from None
        expected = self.tree.root() if cp.size == self.tree.size else self.roots.get(cp.size)
        if expected is None:
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
