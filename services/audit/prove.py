"""Offline proof bundles (``medledger.v1.ProofBundle``), with no I/O: one
entry, its inclusion proof and the signed checkpoint it leads to, checked
with a pinned verifier key and nothing else — no service, no network.

The file format is the protobuf JSON mapping of ProofBundle, the same message
the records service returns beside a record, so either can be checked by
``medledger audit verify-proof``.
"""

from __future__ import annotations

from dataclasses import dataclass
from hashlib import sha256

from google.protobuf import json_format

from medledger.audit.checks import (
    INCLUSION_PROOF, LEAF_HASH, PRODUCER_SIGNATURE, Finding, VerifiedCheckpoint, check_inclusion_proof, short,
)
from medledger.audit.envelopes import TOPIC_OF_TYPE
from medledger.ledger import note
from medledger.ledger.proofs import key_name
from medledger.runtime.envelope import EnvelopeVerifier, UnauthenticatedEvent
from medledger.v1 import events_pb2, ledger_pb2

CHECKPOINT = "checkpoint"
BUNDLE = "bundle"


def to_json(proof: ledger_pb2.ProofBundle) -> str:
    return json_format.MessageToJson(proof, indent=2) + "\n"


def from_json(text: str) -> ledger_pb2.ProofBundle:
    """ValueError if the text is not a ProofBundle in protobuf JSON."""
    try:
        return json_format.Parse(text, ledger_pb2.ProofBundle())
    except json_format.ParseError as exc:
        raise ValueError(f"not a medledger.v1.ProofBundle in JSON: {exc}") from None


@dataclass(frozen=True)
class ProofResult:
    findings: list[Finding]
    checkpoint_size: int | None = None
    event_type: str = ""
    event_id: str = ""

    @property
    def valid(self) -> bool:
        return not self.findings


def verify_bundle(
    proof: ledger_pb2.ProofBundle, verifier: note.NoteVerifier, producers: EnvelopeVerifier | None = None
) -> ProofResult:
    """Everything a bundle claims, against the pinned checkpoint key (and,
    if given, the pinned producer keys for the event's own signature)."""
    findings: list[Finding] = []
    entry, path = proof.entry, proof.inclusion_proof
    try:
        cp = note.open_checkpoint(proof.checkpoint, verifier)
    except note.NoteError as exc:
        named = proof.verifier_key_name or "no key"
        return ProofResult([Finding(CHECKPOINT, expected=f"signed by {key_name(verifier.verifier_key)}",
                                    found=exc.reason, detail=f"the bundle names {named}")])
    leaf = sha256(b"\x00" + entry.event).digest()
    if leaf != entry.leaf_hash:
        findings.append(Finding(LEAF_HASH, index=entry.index, expected=short(leaf), found=short(entry.leaf_hash)))
    if path.leaf_index != entry.index or path.tree_size != cp.size:
        findings.append(Finding(BUNDLE, index=entry.index, expected=f"a proof of entry {entry.index} in {cp.size}",
                                found=f"a proof of entry {path.leaf_index} in {path.tree_size}"))
    elif entry.index >= cp.size:
        findings.append(Finding(INCLUSION_PROOF, index=entry.index, checkpoint=cp.size, found="beyond the checkpoint"))
    else:
        failed = check_inclusion_proof(entry.index, leaf, VerifiedCheckpoint(cp.size, cp.root, proof.checkpoint),
                                       list(path.hashes))
        if failed is not None:
            findings.append(failed)
    env = events_pb2.EventEnvelope()
    try:
        env.ParseFromString(entry.event)
    except Exception:  # noqa: BLE001 - any parse failure means "not an envelope"
        findings.append(Finding(BUNDLE, index=entry.index, expected="a medledger.v1.EventEnvelope", found="undecodable"))
        return ProofResult(findings, cp.size)
    if entry.event_id and entry.event_id != env.event_id:
        findings.append(Finding(BUNDLE, index=entry.index, expected=f"event id {env.event_id}", found=entry.event_id))
    if producers is not None:
        try:
            producers.check(TOPIC_OF_TYPE.get(env.event_type, "(no event topic)"), env)
        except UnauthenticatedEvent as exc:
            findings.append(Finding(PRODUCER_SIGNATURE, index=entry.index, found=str(exc)))
    return ProofResult(findings, cp.size, env.event_type, env.event_id)
