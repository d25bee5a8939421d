"""What an auditor remembers between runs (``--state FILE``), with no I/O
beyond the text it is given.

The last checkpoint this auditor verified: its signed note, size and root,
and the verifier key it was verified with. The next run must find the new
log consistent with it, both by recomputing the root at that size from the
entries it replays and by a consistency proof the ledger serves. So a history
rewritten and re-signed after the fact, or a different tree shown to someone
else (a split view), fails even when every hash in the database was
recomputed and every checkpoint re-signed with a key the auditor now pins.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Sequence

from medledger.audit.checks import STATE, Finding, VerifiedCheckpoint, check_consistency_proof, short

FORMAT = "medledger-audit-state/v1"


class StateError(ValueError):
    """A state file that is not one this tool wrote."""


@dataclass(frozen=True)
class AuditorState:
    tree_size: int
    root_hash: bytes
    checkpoint: bytes
    verifier_key: str
    origin: str
    verified_at: datetime

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT,
            "tree_size": self.tree_size,
            "root_hash": base64.b64encode(self.root_hash).decode(),
            "checkpoint": self.checkpoint.decode("utf-8"),
            "verifier_key": self.verifier_key,
            "origin": self.origin,
            "verified_at": self.verified_at.isoformat(),
        }, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> AuditorState:
        try:
            raw = json.loads(text)
            if raw.get("format") != FORMAT:
                raise StateError(f"not a {FORMAT} file")
            return cls(
                tree_size=int(raw["tree_size"]),
                root_hash=base64.b64decode(raw["root_hash"], validate=True),
                checkpoint=str(raw["checkpoint"]).encode("utf-8"),
                verifier_key=str(raw["verifier_key"]),
                origin=str(raw["origin"]),
                verified_at=datetime.fromisoformat(raw["verified_at"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StateError(f"unreadable audit state: {exc}") from None

    @classmethod
    def after(cls, checkpoint: VerifiedCheckpoint, verifier_key: str, origin: str) -> AuditorState:
        return cls(checkpoint.size, checkpoint.root, checkpoint.note, verifier_key, origin, datetime.now(timezone.utc))

    @property
    def as_checkpoint(self) -> VerifiedCheckpoint:
        return VerifiedCheckpoint(self.tree_size, self.root_hash, self.checkpoint)


def check_state(
    state: AuditorState,
    recomputed_root: bytes | None,
    latest: VerifiedCheckpoint | None,
    served_proof: Sequence[bytes] | None,
) -> list[Finding]:
    """The log verified now against the checkpoint verified last time.

    ``recomputed_root``: the root this run recomputed at ``state.tree_size``
    (None if the log no longer has that many entries); ``served_proof``: the
    ledger's consistency proof from that size to ``latest`` (None when the
    source serves no proofs, e.g. a replay from Kafka)."""
    findings: list[Finding] = []
    remembered = f"size {state.tree_size}, root {short(state.root_hash)}"
    if latest is None or latest.size < state.tree_size:
        now = "no verified checkpoint" if latest is None else f"a latest checkpoint of size {latest.size}"
        findings.append(Finding(STATE, checkpoint=state.tree_size, expected=f"a log extending {remembered}",
                                found=now, detail="the log shrank since this auditor last verified it"))
        return findings
    if recomputed_root is not None and recomputed_root != state.root_hash:
        findings.append(Finding(STATE, checkpoint=state.tree_size, expected=short(state.root_hash),
                                found=short(recomputed_root), entries=(0, state.tree_size - 1),
                                detail="the entries now served are not the ones verified last time: history was rewritten"))
    if served_proof is not None:
        failed = check_consistency_proof(state.as_checkpoint, latest, served_proof, check=STATE)
        if failed is not None:
            findings.append(failed)
    return findings
