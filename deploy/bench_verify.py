"""What a forged record costs a verifier (docs/architecture.md, Event signing:
"What a forgery costs"). In-process, no Kafka or PostgreSQL: the CPU of
naming the forgeries in one fetched batch of ~400-byte signed events, by
``runtime.forgeries.invalid_positions`` (a failed batch checked again in
chunks, only failing chunks one by one), next to
checking every signature alone once the batch failed (what MedLedger did
before 2026-12-02, written out here as the reference). Forgeries are spread
evenly over the batch, so each fails a chunk of its own (the attacker's best
placement against chunks).

Usage: python deploy/bench_verify.py [--batch 500,5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from typing import Callable

import medledger_ed25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from medledger.identity.keyfiles import raw_public_key
from medledger.runtime.forgeries import invalid_positions

Check = Callable[[list[bytes], list[bytes], list[bytes]], list[int]]


def each_alone_after_a_failed_batch(keys: list[bytes], messages: list[bytes], signatures: list[bytes]) -> list[int]:
    """The reference: one batch check, then every signature alone if it failed."""
    if medledger_ed25519.verify_batch(keys, messages, signatures):
        return []
    return [i for i, (k, m, s) in enumerate(zip(keys, messages, signatures)) if not medledger_ed25519.verify(k, m, s)]


def signed_batch(size: int, forged: int) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """size ~400-byte messages under four producer keys, ``forged`` of them
    (evenly spaced) carrying a genuine signature of other bytes: well formed,
    so no check can refuse it before the curve arithmetic."""
    signers = [Ed25519PrivateKey.generate() for _ in range(4)]
    messages = [os.urandom(400) for _ in range(size)]
    keys = [raw_public_key(signers[i % 4]) for i in range(size)]
    signatures = [signers[i % 4].sign(m) for i, m in enumerate(messages)]
    for n in range(forged):
        i = (n * size) // forged
        signatures[i] = signers[i % 4].sign(b"other bytes " + messages[i])
    return keys, messages, signatures


def cpu_us_per_signature(check: Check, batch: tuple[list[bytes], list[bytes], list[bytes]], rounds: int) -> tuple[float, int]:
    """Median over rounds of the process's CPU per signature, and the count found."""
    samples, found = [], 0
    for _ in range(rounds):
        start = time.process_time()
        found = len(check(*batch))
        samples.append((time.process_time() - start) / len(batch[0]) * 1e6)
    return sorted(samples)[len(samples) // 2], found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=lambda v: [int(s) for s in v.split(",")], default=[500, 5000])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"# {shlex.join([sys.executable, *sys.argv])}", flush=True)
    for size in args.batch:
        for forged in sorted({0, 1, 2, 10, size // 100, size // 10, size // 2, size}):
            batch = signed_batch(size, forged)
            chunked, found = cpu_us_per_signature(invalid_positions, batch, args.rounds)
            alone, found_alone = cpu_us_per_signature(each_alone_after_a_failed_batch, batch, args.rounds)
            assert found == found_alone == forged
            print(f"batch of {size:,}, {forged:,} forged: chunks {chunked:6.2f} µs CPU per signature, "
                  f"each alone after a failed batch {alone:6.2f} µs ({alone / chunked:.1f}x)", flush=True)


if __name__ == "__main__":
    main()
