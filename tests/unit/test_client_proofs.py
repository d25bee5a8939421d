"""Offline verification of a served record (medledger.client.proofs): a
genuine answer verifies with nothing but pinned keys, and every way of
serving something other than what the ledger sequenced is caught — other
content, another salt, another ledger, another origin, an event no records
key signed, a proof of another event, a rewritten attestation, a forged
author signature — while a version not yet sequenced is "pending", not
"valid", and an erased version still proves its place on the ledger."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medledger.client import ProofInvalid, ProofPending, TrustAnchors, verify_record
from medledger.client.attestation import attestation_message, canonical, canonical_json, commitment, new_salt
from medledger.ledger import merkle, note
from medledger.runtime.envelope import EventSigner, envelope
from medledger.testing.stack import PRODUCERS
from medledger.v1 import consent_pb2, events_pb2, ledger_pb2, records_pb2
from tests.unit.merkle_reference import reference_inclusion

ORIGIN = "test.medledger/ledger"
PATIENT = "0190d6a4-0000-7000-8000-0000000000aa"
AUTHOR = "0190d6a4-0000-7000-8000-0000000000bb"
OBSERVATION = {
    "resourceType": "Observation", "id": "rec-1", "status": "final",
    "code": {"text": "heart rate"}, "subject": {"reference": f"Patient/{PATIENT}"},
    "valueQuantity": {"value": 72, "unit": "beats/min"},
}


@dataclass
class Ledger:
    signer: note.NoteSigner
    author: Ed25519PrivateKey

    @property
    def anchors(self) -> TrustAnchors:
        return TrustAnchors.from_texts(self.signer.verifier_key, ORIGIN, PRODUCERS.keys_text)


def served_record(
    ledger: Ledger, seal: Callable[[events_pb2.EventEnvelope], bytes] = PRODUCERS.seal, author: Ed25519PrivateKey | None = None
) -> records_pb2.GetRecordResponse:
    """A GetRecord answer as the records service builds it, its event the
    fourth of five ledger entries, sealed by ``seal`` and signed by
    ``author`` (default: the genuine author)."""
    content, salt = canonical_json(OBSERVATION), new_salt()
    attestation = records_pb2.RecordAttestation(
        record_id="rec-1", version=1, patient_id=PATIENT, organization_id="org-a", author_id=AUTHOR,
        author_key_id="k1", category="Observation", commitment=commitment(salt, content),
    )
    attestation.signed_at.GetCurrentTime()
    signature = (author or ledger.author).sign(attestation_message(attestation))
    created = records_pb2.RecordCreated(attestation=attestation, author_signature=signature, basis=records_pb2.WRITE_BASIS_REGISTERING_ORGANIZATION)
    env = envelope(created, aggregate_id=PATIENT, producer="records", actor=AUTHOR)
    leaf = seal(env)
    others = [PRODUCERS.event(consent_pb2.ConsentRevoked(consent_id=f"c{i}", patient_id="p"), "consent", "p") for i in range(4)]
    leaves = others[:3] + [leaf] + others[3:]
    index, size = 3, len(leaves)
    tree = merkle.CompactRange.empty()
    for value in leaves:
        tree.append(merkle.leaf_hash(value))
    checkpoint = ledger.signer.sign(note.checkpoint_body(note.Checkpoint(ORIGIN, size, tree.root())))
    record = records_pb2.Record(
        record_id="rec-1", version=1, latest_version=1, patient_id=PATIENT, category="Observation",
        custodian_organization_id="org-a", author_id=AUTHOR, attestation=attestation, author_signature=signature,
        commitment=attestation.commitment, resource_json=content.decode(), salt=salt, event_id=env.event_id, ledger_index=index,
    )
    proof = ledger_pb2.ProofBundle(
        entry=ledger_pb2.Entry(index=index, event=leaf, leaf_hash=merkle.leaf_hash(leaf), event_id=env.event_id),
        inclusion_proof=ledger_pb2.InclusionProof(leaf_index=index, tree_size=size, hashes=reference_inclusion(leaves, index)),
        checkpoint=checkpoint, verifier_key_name="+".join(ledger.signer.verifier_key.split("+")[:2]),
    )
    return records_pb2.GetRecordResponse(record=record, proof_status=records_pb2.PROOF_INCLUDED, proof=proof)


@pytest.fixture
def ledger() -> Ledger:
    return Ledger(note.NoteSigner.generate(ORIGIN), Ed25519PrivateKey.generate())


def author_key(ledger: Ledger) -> bytes:
    return ledger.author.public_key().public_bytes_raw()


def test_a_genuine_answer_verifies_with_pinned_keys_alone(ledger: Ledger) -> None:
    reply = served_record(ledger)
    verified = verify_record(reply, ledger.anchors, author_key(ledger))
    assert verified.content_checked and verified.author_checked
    assert verified.proven.index == 3 and verified.proven.checkpoint.size == 5
    assert verified.proven.envelope.event_id == reply.record.event_id
    assert json.loads(verified.record.resource_json)["valueQuantity"]["value"] == 72


def _content(r: records_pb2.GetRecordResponse) -> None:
    r.record.resource_json = r.record.resource_json.replace("72", "27")


def _salt(r: records_pb2.GetRecordResponse) -> None:
    r.record.salt = bytes(32)


def _other_event(r: records_pb2.GetRecordResponse) -> None:
    r.record.event_id = "0190d6a4-0000-7000-8000-00000000ffff"


def _served_attestation(r: records_pb2.GetRecordResponse) -> None:
    # a consistent story for other content, which the ledger never saw
    content, salt = canonical_json(dict(OBSERVATION, valueQuantity={"value": 27, "unit": "beats/min"})), new_salt()
    r.record.attestation.commitment = r.record.commitment = commitment(salt, content)
    r.record.resource_json, r.record.salt = content.decode(), salt


def _inclusion_path(r: records_pb2.GetRecordResponse) -> None:
    r.proof.inclusion_proof.hashes[0] = hashlib.sha256(b"x").digest()


def _leaf(r: records_pb2.GetRecordResponse) -> None:
    r.proof.entry.event = r.proof.entry.event + b"\x00"


def _checkpoint_key(r: records_pb2.GetRecordResponse) -> None:
    other = note.NoteSigner.generate(ORIGIN)
    cp = note.parse_checkpoint(r.proof.checkpoint[: r.proof.checkpoint.rfind(b"\n\n") + 1])
    r.proof.checkpoint = other.sign(note.checkpoint_body(cp))


def _author_signature(r: records_pb2.GetRecordResponse) -> None:
    r.record.author_signature = Ed25519PrivateKey.generate().sign(attestation_message(r.record.attestation))


TAMPERINGS: dict[str, Callable[[records_pb2.GetRecordResponse], None]] = {
    "other content": _content,
    "another salt": _salt,
    "a proof of another event": _other_event,
    "an attestation the ledger never saw": _served_attestation,
    "a wrong audit path": _inclusion_path,
    "other leaf bytes": _leaf,
    "a checkpoint by another key": _checkpoint_key,
    "an author signature by another key": _author_signature,
}


@pytest.mark.parametrize("tampering", list(TAMPERINGS))
def test_anything_but_what_was_sequenced_is_caught(ledger: Ledger, tampering: str) -> None:
    reply = served_record(ledger)
    TAMPERINGS[tampering](reply)
    with pytest.raises(ProofInvalid):
        verify_record(reply, ledger.anchors, author_key(ledger))


@pytest.mark.parametrize("sealer", ["consent's key", "an unpinned records key"])
def test_an_event_not_signed_by_the_records_service_is_caught(ledger: Ledger, sealer: str) -> None:
    seal = PRODUCERS.signers["consent"].seal if sealer == "consent's key" else EventSigner.generate("records").seal
    reply = served_record(ledger, seal)
    with pytest.raises(ProofInvalid, match="producer signature"):
        verify_record(reply, ledger.anchors)


def test_an_attestation_not_signed_by_the_author_is_caught(ledger: Ledger) -> None:
    reply = served_record(ledger, author=Ed25519PrivateKey.generate())  # sequenced as it was served
    with pytest.raises(ProofInvalid, match="author signature does not verify"):
        verify_record(reply, ledger.anchors, author_key(ledger))


def test_another_logs_checkpoint_is_caught(ledger: Ledger) -> None:
    reply = served_record(ledger)
    anchors = TrustAnchors.from_texts(ledger.signer.verifier_key, "another.log/origin", PRODUCERS.keys_text)
    with pytest.raises(ProofInvalid, match="another log"):
        verify_record(reply, anchors)


def test_a_version_not_yet_sequenced_is_pending_not_valid(ledger: Ledger) -> None:
    reply = served_record(ledger)
    reply.proof_status = records_pb2.PROOF_PENDING
    reply.ClearField("proof")
    with pytest.raises(ProofPending):
        verify_record(reply, ledger.anchors)


def test_an_erased_version_still_proves_its_place_but_says_its_content_is_gone(ledger: Ledger) -> None:
    reply = served_record(ledger)
    reply.record.resource_json, reply.record.salt = "", b""
    reply.record.erased_at.GetCurrentTime()
    verified = verify_record(reply, ledger.anchors, author_key(ledger))
    assert not verified.content_checked and verified.author_checked


def test_the_author_signature_is_over_the_documented_domain_separated_message(ledger: Ledger) -> None:
    attestation = served_record(ledger).record.attestation
    assert attestation_message(attestation) == b"medledger.v1.RecordAttestation\n" + attestation.SerializeToString(deterministic=True)
    assert canonical(attestation) == attestation.SerializeToString(deterministic=True)
