"""Signers' keys as the log itself states them, and the statements people
signed (consent terms, record attestations, erasure requests) checked
against them, with no I/O.

The identity events in the ledger carry every public key an identity ever
had (IdentityRegistered, KeyRotated) and when each stopped (the next
rotation, KeyRevoked, IdentityRevoked). Folding them gives each key's
history by time, so a consent is checked against the key in effect when it
was signed, whatever the identity service says today and in whatever order
the log interleaved the topics. Each signature is checked by the services'
shared rule for signed statements (runtime/signed.py): the key in effect at
signed_at, not revoked by the time the statement was recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Iterable, Sequence

from medledger.audit.checks import Finding
from medledger.audit.envelopes import KeyEvent, SignedStatement
from medledger.identity.domain import Key
from medledger.runtime.errors import PermissionDenied
from medledger.runtime.signed import SigningKey, verify_statement


@dataclass
class KeyHistory:
    """Every key of every identity the log registered, by (identity, key id)."""

    keys: dict[tuple[str, str], Key] = field(default_factory=dict)
    identity_revoked: dict[str, datetime] = field(default_factory=dict)
    current: dict[str, str] = field(default_factory=dict)  # identity id -> its newest key id

    @classmethod
    def from_events(cls, events: Iterable[KeyEvent]) -> KeyHistory:
        history = cls()
        ordered = sorted(events, key=lambda e: (e.at, e.index))
        for event in ordered:
            history.apply(event)
        return history

    def apply(self, event: KeyEvent) -> None:
        """Fold one fact in; events must come in time order."""
        if event.change in ("registered", "rotated"):
            previous = self.keys.get((event.identity_id, self.current.get(event.identity_id, "")))
            if previous is not None and previous.replaced_at is None:
                self.keys[(event.identity_id, previous.key_id)] = replace(previous, replaced_at=event.at)
            self.current[event.identity_id] = event.key_id
            self.keys[(event.identity_id, event.key_id)] = Key(event.key_id, event.public_key, event.at)
        elif event.change == "key revoked":
            record = self.keys.get((event.identity_id, event.key_id))
            if record is not None and record.revoked_at is None:
                self.keys[(event.identity_id, event.key_id)] = replace(record, revoked_at=event.at)
        elif event.change == "identity revoked":
            self.identity_revoked.setdefault(event.identity_id, event.at)

    def as_of(self, identity_id: str, key_id: str, at: datetime) -> SigningKey | None:
        """The key as the consent service resolved it at ``at``: its window,
        and its revocation only if it had happened by then."""
        record = self.keys.get((identity_id, key_id))
        if record is None:
            return None
        revoked = record.revoked_at if record.revoked_at is not None and record.revoked_at <= at else None
        return SigningKey(record.key_id, record.public_key, record.valid_from, record.replaced_at, revoked)


def check_statement(history: KeyHistory, statement: SignedStatement) -> Finding | None:
    """A signed statement against the signer's key as of when it was recorded."""
    def failed(found: str) -> Finding:
        return Finding(statement.check, index=statement.index,
                       expected=f"signed by {statement.signer_id} key {statement.signer_key_id}",
                       found=found, detail=statement.subject)

    revoked = history.identity_revoked.get(statement.signer_id)
    if revoked is not None and revoked <= statement.recorded_at:
        return failed(f"the signer was revoked at {revoked.isoformat()}, before it was recorded")
    key = history.as_of(statement.signer_id, statement.signer_key_id, statement.recorded_at)
    if key is None:
        return failed("no such key of the signer in the log's identity events")
    try:
        verify_statement(key, statement.signed_at, statement.message, statement.signature, statement.subject)
    except PermissionDenied as exc:
        return failed(str(exc))
    return None


def check_statements(history: KeyHistory, statements: Sequence[SignedStatement]) -> list[Finding]:
    """check_statement for a chunk (run on worker threads: the checks release the GIL)."""
    return [f for f in (check_statement(history, s) for s in statements) if f is not None]
