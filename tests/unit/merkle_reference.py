"""The naive recursive RFC 6962 §2.1 definitions (MTH, PATH, SUBPROOF), for cross-checks only.

Deliberately written straight from the RFC text and sharing no code with
medledger.ledger.merkle, so that a bug there cannot hide in both.
"""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import sha256


def _split(n: int) -> int:
    """The largest power of two smaller than n (precondition n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def reference_root(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n])."""
    n = len(leaves)
    if n == 0:
        return sha256(b"").digest()
    if n == 1:
        return sha256(b"\x00" + leaves[0]).digest()
    k = _split(n)
    return sha256(b"\x01" + reference_root(leaves[:k]) + reference_root(leaves[k:])).digest()


def reference_inclusion(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]): the audit path, bottom-up. Precondition 0 <= index < n."""
    n = len(leaves)
    if not 0 <= index < n:
        raise ValueError(f"index {index} outside a tree of {n} leaves")
    if n == 1:
        return []
    k = _split(n)
    if index < k:
        return reference_inclusion(leaves[:k], index) + [reference_root(leaves[k:])]
    return reference_inclusion(leaves[k:], index - k) + [reference_root(leaves[:k])]


def _subproof(m: int, leaves: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [reference_root(leaves)]
    k = _split(n)
    if m <= k:
        return _subproof(m, leaves[:k], complete) + [reference_root(leaves[k:])]
    return _subproof(m - k, leaves[k:], False) + [reference_root(leaves[:k])]


def reference_consistency(leaves: Sequence[bytes], m: int) -> list[bytes]:
    """PROOF(m, D[n]) = SUBPROOF(m, D[n], true). Precondition 0 < m <= n."""
    if not 0 < m <= len(leaves):
        raise ValueError(f"first size {m} outside 1..{len(leaves)}")
    return _subproof(m, leaves, True)
