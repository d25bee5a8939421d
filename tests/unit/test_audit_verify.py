"""The auditor's replay catches every kind of tampering with the log."""

from __future__ import annotations

import pytest

from medledger.audit.verify import AuditFailure, LogAuditor, verify_entries
from medledger.ledger import merkle, note

ORIGIN = "audit.test/log"


def _log(n: int) -> list[tuple[int, bytes, bytes, bytes]]:
    entries, chain = [], merkle.GENESIS_CHAIN
    for i in range(n):
        event = f"event-{i}".encode()
        leaf = merkle.leaf_hash(event)
        chain = merkle.chain_hash(chain, leaf)
        entries.append((i, event, leaf, chain))
    return entries


def _checkpoint(signer: note.NoteSigner, entries: list[tuple[int, bytes, bytes, bytes]]) -> bytes:
    tree = merkle.CompactRange.empty()
    for _, _, leaf, _ in entries:
        tree.append(leaf)
    return signer.sign(note.checkpoint_body(note.Checkpoint(ORIGIN, tree.size, tree.root())))


@pytest.fixture
def signer() -> note.NoteSigner:
    return note.NoteSigner.generate(ORIGIN)


def test_an_untouched_log_verifies(signer: note.NoteSigner) -> None:
    entries = _log(100)
    cp = verify_entries(entries, _checkpoint(signer, entries), note.NoteVerifier.from_verifier_key(signer.verifier_key))
    assert cp.size == 100


def test_checkpoint_at_an_earlier_size_verifies_with_remembered_root(signer: note.NoteSigner) -> None:
    entries = _log(20)
    auditor = LogAuditor(note.NoteVerifier.from_verifier_key(signer.verifier_key), origin=ORIGIN)
    for e in entries[:7]:
        auditor.add(*e)
    auditor.remember_root()
    for e in entries[7:]:
        auditor.add(*e)
    assert auditor.check(_checkpoint(signer, entries[:7])).size == 7
    assert auditor.check(_checkpoint(signer, entries)).size == 20


@pytest.mark.parametrize("tamper", ["event", "leaf", "chain", "gap", "checkpoint_key", "root"])
def test_tampering_is_detected(signer: note.NoteSigner, tamper: str) -> None:
    entries = _log(30)
    signed = _checkpoint(signer, entries)
    verifier = note.NoteVerifier.from_verifier_key(signer.verifier_key)
    i, event, leaf, chain = entries[12]
    if tamper == "event":
        entries[12] = (i, event + b"!", leaf, chain)
    elif tamper == "leaf":
        entries[12] = (i, event, merkle.leaf_hash(b"other"), chain)
    elif tamper == "chain":
        entries[12] = (i, event, leaf, bytes(32))
    elif tamper == "gap":
        del entries[12]
    elif tamper == "checkpoint_key":
        verifier = note.NoteVerifier.from_verifier_key(note.NoteSigner.generate(ORIGIN).verifier_key)
    elif tamper == "root":
        signed = _checkpoint(signer, _log(29) + [(29, b"forged", merkle.leaf_hash(b"forged"), bytes(32))])
    with pytest.raises((AuditFailure, note.NoteError)):
        verify_entries(entries, signed, verifier)
