"""Which signatures of a failed batch do not verify, without checking the
whole batch one signature at a time (docs/architecture.md, Event signing:
"What a forgery costs"). Pure: the native ZIP 215 verifier, no I/O.

A ZIP 215 batch check costs about a sixth of checking each signature alone
here (8 µs against 44–50 µs per signature, docs/benchmarks.md), and a batch
of valid signatures always verifies. Checking a whole failed fetch alone
lets one forged record slipped into each fetch make every consumer pay six
times its verifying CPU for all of it. So a failed batch is checked again in
chunks of ``CHUNK`` as batches, and only the chunks that fail are checked
one by one.

Chunk checks pay only while most chunks pass. Chunks are taken in a random
order, so their failures sample the whole batch and no placement of
forgeries can steer which are taken first; once failed chunks outnumber
passed ones by ``GIVE_UP_MARGIN``, forgeries are dense and the rest is
checked alone at once, costing a few chunk checks more than before.
"""

from __future__ import annotations

import random
from typing import Sequence

import medledger_ed25519

CHUNK = 64  # a batch check of 64 costs ~11 µs per signature here, against ~8 µs for thousands
GIVE_UP_MARGIN = 3


def invalid_positions(keys: Sequence[bytes], messages: Sequence[bytes], signatures: Sequence[bytes]) -> list[int]:
    """The positions, ascending, whose signature does not verify under ZIP 215
    (exactly those ``medledger_ed25519.verify`` refuses)."""
    size = len(keys)
    if medledger_ed25519.verify_batch(keys, messages, signatures):
        return []
    chunks = [(lo, min(lo + CHUNK, size)) for lo in range(0, size, CHUNK)]
    random.shuffle(chunks)
    passed = failed = 0
    invalid: list[int] = []
    for lo, hi in chunks:
        if len(chunks) > 1 and failed < passed + GIVE_UP_MARGIN:
            if medledger_ed25519.verify_batch(keys[lo:hi], messages[lo:hi], signatures[lo:hi]):
                passed += 1
                continue
            failed += 1
        invalid += [i for i in range(lo, hi) if not medledger_ed25519.verify(keys[i], messages[i], signatures[i])]
    return sorted(invalid)
