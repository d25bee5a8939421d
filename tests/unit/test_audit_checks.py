"""The auditor's verification core on logs built in memory: an untouched log
with genuine producer, identity and consent signatures verifies; each kind of
tampering is found and located; a rewritten history that re-signs every
checkpoint with a new key passes every check but the remembered checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterator, Sequence

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medledger.audit import checks, pipeline
from medledger.audit.checks import ListedCheckpoint
from medledger.audit.envelopes import pinned_verifier
from medledger.audit.state import AuditorState
from medledger.identity.domain import key_id_for
from medledger.ledger import merkle, note
from medledger.runtime.envelope import envelope, parse_producer_keys
from medledger.testing.consent import terms
from medledger.consent.signing import sign_terms
from medledger.testing.stack import PRODUCERS
from medledger.v1 import consent_pb2, identity_pb2, ledger_pb2

ORIGIN = "audit.test/log"
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


@dataclass
class History:
    """Signed events as the services would produce them."""

    values: list[bytes] = field(default_factory=list)

    def add(self, payload: object, producer: str, aggregate: str, at: datetime, actor: str = "") -> str:
        env = envelope(payload, aggregate_id=aggregate, producer=producer, actor=actor, occurred_at=at)  # type: ignore[arg-type]
        self.values.append(PRODUCERS.seal(env))
        return env.event_id

    def register(self, identity_id: str, key: Ed25519PrivateKey, at: datetime) -> None:
        self.add(identity_pb2.IdentityRegistered(
            identity_id=identity_id, kind=identity_pb2.PATIENT, key_id=key_id_for(raw(key)), public_key=raw(key),
        ), "identity", identity_id, at)

    def rotate(self, identity_id: str, old: Ed25519PrivateKey, new: Ed25519PrivateKey, at: datetime) -> None:
        self.add(identity_pb2.KeyRotated(identity_id=identity_id, key_id=key_id_for(raw(new)), public_key=raw(new),
                                         previous_key_id=key_id_for(raw(old))), "identity", identity_id, at)

    def revoke_key(self, identity_id: str, key: Ed25519PrivateKey, at: datetime) -> None:
        self.add(identity_pb2.KeyRevoked(identity_id=identity_id, key_id=key_id_for(raw(key))), "identity", identity_id, at)

    def grant(self, patient: str, key: Ed25519PrivateKey, signed_at: datetime, at: datetime,
              signing_key: Ed25519PrivateKey | None = None) -> str:
        t = terms(patient, "doctor-1", signer_key_id=key_id_for(raw(key)), signed_at=signed_at,
                  valid_from=signed_at, valid_until=signed_at + timedelta(days=30))
        encoded, signature = sign_terms(signing_key or key, t)
        granted = consent_pb2.ConsentGranted(terms=t, signature=signature, grantee_kind=consent_pb2.GRANTEE_KIND_PRACTITIONER,
                                             signer_role=consent_pb2.SIGNER_ROLE_PATIENT)
        return self.add(granted, "consent", patient, at, actor=patient)

    def access(self, patient: str, at: datetime, allow: bool = True) -> str:
        decided = consent_pb2.AccessDecided(
            requester_id="doctor-1", patient_id=patient, purpose=consent_pb2.PURPOSE_TREATMENT, category="Observation",
            decision=consent_pb2.DECISION_ALLOW if allow else consent_pb2.DECISION_DENY,
            reason=consent_pb2.REASON_CONSENT if allow else consent_pb2.REASON_NO_CONSENT, asked_by="svc",
        )
        return self.add(decided, "consent", patient, at, actor="doctor-1")


class MemoryLedger:
    """A ledger in memory: entries, every tree node, checkpoints every
    ``every`` entries, and proofs served from its nodes (which a test may damage)."""

    name = "memory"
    serves_proofs = True

    def __init__(self, values: Sequence[bytes], signer: note.NoteSigner, every: int = 7) -> None:
        self.entries: list[ledger_pb2.Entry] = []
        self.nodes: dict[merkle.NodeId, bytes] = {}
        self.listed: list[ListedCheckpoint] = []
        self.signer = signer
        tree, chain = merkle.CompactRange.empty(), merkle.GENESIS_CHAIN
        self._checkpoint(tree, chain)
        for i, value in enumerate(values):
            leaf = merkle.leaf_hash(value)
            chain = merkle.chain_hash(chain, leaf)
            for node_id, node in tree.append(leaf):
                self.nodes[node_id] = node
            self.entries.append(ledger_pb2.Entry(index=i, event=value, leaf_hash=leaf, chain_hash=chain))
            if (i + 1) % every == 0 or i + 1 == len(values):
                self._checkpoint(tree, chain)

    def _checkpoint(self, tree: merkle.CompactRange, chain: bytes) -> None:
        body = note.checkpoint_body(note.Checkpoint(ORIGIN, tree.size, tree.root()))
        self.listed.append(ListedCheckpoint(tree.size, self.signer.sign(body), chain))

    def checkpoints(self) -> list[ListedCheckpoint]:
        return list(self.listed)

    def pages(self, start: int, end: int) -> Iterator[Sequence[ledger_pb2.Entry]]:
        chosen = [e for e in self.entries if start <= e.index < end]
        for i in range(0, len(chosen), 5):
            yield chosen[i : i + 5]

    def _proof(self, plan: merkle.ProofPlan) -> list[bytes]:
        return merkle.assemble(plan, [self.nodes[i] for i in plan.ids])

    def consistency_proof(self, first: int, second: int) -> list[bytes] | None:
        return self._proof(merkle.consistency_plan(first, second))

    def inclusion_proof(self, index: int, size: int) -> list[bytes] | None:
        return self._proof(merkle.inclusion_plan(index, size))


def history(patients: int = 3, name: str = "patient") -> History:
    h = History()
    keys = {f"{name}-{p}": Ed25519PrivateKey.generate() for p in range(patients)}
    for n, (patient, key) in enumerate(keys.items()):
        h.register(patient, key, T0 + timedelta(minutes=n))
    for n, (patient, key) in enumerate(keys.items()):
        h.grant(patient, key, T0 + timedelta(hours=1, minutes=n), T0 + timedelta(hours=1, minutes=n, seconds=5))
        for i in range(8):
            h.access(patient, T0 + timedelta(hours=2, minutes=n, seconds=i), allow=i % 3 != 0)
    return h


@pytest.fixture
def signer() -> note.NoteSigner:
    return note.NoteSigner.generate(ORIGIN)


def options(signer: note.NoteSigner, **kw: object) -> pipeline.Options:
    verifier = note.NoteVerifier.from_verifier_key(signer.verifier_key)
    producers = pinned_verifier(parse_producer_keys(PRODUCERS.keys_text))
    return pipeline.Options(verifier, ORIGIN, producers, inclusion_samples=10, **kw)  # type: ignore[arg-type]


def only(outcome: pipeline.Outcome) -> list[checks.Finding]:
    return outcome.findings.sorted()


def test_an_untouched_log_verifies_every_signature(signer: note.NoteSigner) -> None:
    h = history()
    ledger = MemoryLedger(h.values, signer)
    outcome = pipeline.run(ledger, options(signer))
    assert outcome.ok, pipeline.report_lines(outcome)
    assert outcome.stats.entries == len(h.values)
    assert outcome.stats.producer_signatures == len(h.values)
    assert outcome.stats.signed_statements == {checks.CONSENT_SIGNATURE: 3}
    assert outcome.stats.checkpoints_verified == len(ledger.listed)
    assert outcome.latest is not None and outcome.latest.size == len(h.values)
    assert outcome.stats.served_proofs >= len(ledger.listed) - 2


def _entry(ledger: MemoryLedger, index: int, **changes: object) -> None:
    e = ledger.entries[index]
    fields = {"index": e.index, "event": e.event, "leaf_hash": e.leaf_hash, "chain_hash": e.chain_hash, **changes}
    ledger.entries[index] = ledger_pb2.Entry(**fields)  # type: ignore[arg-type]


def test_changed_event_bytes_are_located_to_the_entry_and_its_checkpoint_interval(signer: note.NoteSigner) -> None:
    ledger = MemoryLedger(history().values, signer)
    _entry(ledger, 10, event=ledger.entries[10].event.replace(b"doctor-1", b"doctor-9"))
    found = only(pipeline.run(ledger, options(signer)))
    leaf = [f for f in found if f.check == checks.LEAF_HASH]
    assert [(f.index, f.entries) for f in leaf] == [(10, (7, 13))]
    root = [f for f in found if f.check == checks.CHECKPOINT_ROOT]
    assert root[0].checkpoint == 14 and root[0].entries == (7, 13)
    assert any(f.check == checks.PRODUCER_SIGNATURE and f.index == 10 for f in found)


def test_a_changed_leaf_hash_or_chain_hash_is_found_where_it_is(signer: note.NoteSigner) -> None:
    ledger = MemoryLedger(history().values, signer)
    _entry(ledger, 4, leaf_hash=bytes(32))
    _entry(ledger, 20, chain_hash=bytes(32))
    found = only(pipeline.run(ledger, options(signer)))
    assert {(f.check, f.index) for f in found} == {
        (checks.LEAF_HASH, 4), (checks.CHAIN_HASH, 4), (checks.CHAIN_HASH, 20), (checks.CHAIN_HASH, 21),
    }
    # the event bytes are intact, so the tree and every checkpoint still verify
    assert not [f for f in found if f.check.startswith("checkpoint")]


def test_a_deleted_row_and_two_swapped_rows_are_located(signer: note.NoteSigner) -> None:
    ledger = MemoryLedger(history().values, signer)
    del ledger.entries[9]
    found = only(pipeline.run(ledger, options(signer)))
    assert found[0].check == checks.INDEX and found[0].index == 9 and found[0].found == "10"
    assert any(f.check == checks.CHECKPOINT_ROOT and f.checkpoint == 14 and f.entries == (7, 13) for f in found)

    ledger = MemoryLedger(history().values, signer)
    a, b = ledger.entries[15], ledger.entries[17]
    _entry(ledger, 15, event=b.event, leaf_hash=b.leaf_hash, chain_hash=b.chain_hash)
    _entry(ledger, 17, event=a.event, leaf_hash=a.leaf_hash, chain_hash=a.chain_hash)
    found = only(pipeline.run(ledger, options(signer)))
    assert {f.index for f in found if f.check == checks.CHAIN_HASH} == {15, 16, 17, 18}
    assert [f.entries for f in found if f.check == checks.CHECKPOINT_ROOT][0] == (14, 20)


def test_a_bad_checkpoint_signature_names_the_checkpoint(signer: note.NoteSigner) -> None:
    ledger = MemoryLedger(history().values, signer)
    other = note.NoteSigner.generate(ORIGIN)
    forged = ledger.listed[3]
    ledger.listed[3] = ListedCheckpoint(forged.tree_size, other.sign(forged.note.split(b"\n\n")[0] + b"\n"), forged.chain_hash)
    found = only(pipeline.run(ledger, options(signer)))
    assert [(f.check, f.checkpoint) for f in found] == [(checks.CHECKPOINT_SIGNATURE, 21)]


def test_a_damaged_tree_node_is_caught_through_the_proofs_the_ledger_serves(signer: note.NoteSigner) -> None:
    ledger = MemoryLedger(history().values, signer)
    # a node the consistency proof between the checkpoints of 14 and 21 uses
    damaged = merkle.consistency_plan(14, 21).ids[0]
    ledger.nodes[damaged] = bytes(32)
    found = only(pipeline.run(ledger, options(signer)))
    failed = [f for f in found if f.check == checks.CONSISTENCY_PROOF]
    assert 21 in {f.checkpoint for f in failed}
    assert all(f"(level {damaged[0]}, index {damaged[1]})" in f.detail for f in failed)
    assert not [f for f in found if f.check in (checks.LEAF_HASH, checks.CHAIN_HASH, checks.CHECKPOINT_ROOT)]


def test_a_forged_event_fails_its_producer_signature(signer: note.NoteSigner) -> None:
    h = history(1)
    forged = envelope(consent_pb2.AccessDecided(requester_id="mallory", patient_id="patient-0"),
                      aggregate_id="patient-0", producer="consent")
    h.values.append(PRODUCERS.seal(forged, producer="records"))  # signed, but by a service that may not
    found = only(pipeline.run(MemoryLedger(h.values, signer), options(signer)))
    assert [(f.check, f.index) for f in found] == [(checks.PRODUCER_SIGNATURE, len(h.values) - 1)]


def test_consent_signatures_are_checked_against_the_key_in_effect_from_the_log(signer: note.NoteSigner) -> None:
    h = History()
    old, new, stranger = (Ed25519PrivateKey.generate() for _ in range(3))
    h.register("p", old, T0)
    good_before_rotation = h.grant("p", old, T0 + timedelta(hours=1), T0 + timedelta(hours=1, seconds=1))
    h.rotate("p", old, new, T0 + timedelta(hours=2))
    h.grant("p", old, T0 + timedelta(hours=3), T0 + timedelta(hours=3, seconds=1))  # old key, signed after rotation
    h.grant("p", new, T0 + timedelta(hours=4), T0 + timedelta(hours=4, seconds=1), signing_key=stranger)
    h.grant("p", new, T0 + timedelta(hours=5), T0 + timedelta(hours=5, seconds=1))  # good
    h.revoke_key("p", new, T0 + timedelta(hours=6))
    h.grant("p", new, T0 + timedelta(hours=5, minutes=30), T0 + timedelta(hours=7))  # backdated with a revoked key
    outcome = pipeline.run(MemoryLedger(h.values, signer), options(signer))
    bad = [f for f in only(outcome) if f.check == checks.CONSENT_SIGNATURE]
    assert [f.index for f in bad] == [3, 4, 7], pipeline.report_lines(outcome)
    assert "not in effect" in bad[0].found and "does not verify" in bad[1].found and "revoked" in bad[2].found
    assert outcome.stats.signed_statements[checks.CONSENT_SIGNATURE] == 5 and good_before_rotation


def test_a_rewritten_and_re_signed_history_is_caught_only_through_the_remembered_checkpoint(
    signer: note.NoteSigner,
) -> None:
    h = history()
    original = MemoryLedger(h.values, signer)
    first = pipeline.run(original, options(signer))
    assert first.ok and first.latest is not None
    remembered = AuditorState.after(first.latest, signer.verifier_key, ORIGIN)
    # the operator drops entry 5 (genuine events stay genuine), recomputes
    # every hash and re-signs every checkpoint with a new key it now publishes
    new_key = note.NoteSigner.generate(ORIGIN)
    rewritten = MemoryLedger(h.values[:5] + h.values[6:] + [h.values[5]], new_key)
    assert pipeline.run(rewritten, options(new_key)).ok  # every hash and signature checks out
    outcome = pipeline.run(rewritten, options(new_key, state=remembered))
    found = only(outcome)
    assert {f.check for f in found} == {checks.STATE}
    assert any("history was rewritten" in f.detail for f in found)
    assert any("verifier key differs" in n for n in outcome.notes)
    # and the original log, grown since, is consistent with what was remembered
    grown = MemoryLedger(h.values + history(1, "later").values, signer)
    assert pipeline.run(grown, options(signer, state=remembered)).ok


def test_a_log_that_shrank_since_the_remembered_checkpoint_fails(signer: note.NoteSigner) -> None:
    h = history()
    first = pipeline.run(MemoryLedger(h.values, signer), options(signer))
    assert first.latest is not None
    state = AuditorState.after(first.latest, signer.verifier_key, ORIGIN)
    found = only(pipeline.run(MemoryLedger(h.values[:-8], signer), options(signer, state=state)))
    assert [f.check for f in found] == [checks.STATE] and "shrank" in found[0].detail


def test_state_round_trips_and_rejects_other_files(signer: note.NoteSigner) -> None:
    first = pipeline.run(MemoryLedger(history(1).values, signer), options(signer))
    assert first.latest is not None
    state = AuditorState.after(first.latest, signer.verifier_key, ORIGIN)
    assert AuditorState.from_json(state.to_json()) == state
    from medledger.audit.state import StateError

    with pytest.raises(StateError):
        AuditorState.from_json('{"format": "something else"}')


def test_record_and_erasure_signatures_are_checked_against_their_signers_keys(signer: note.NoteSigner) -> None:
    from medledger.records.domain import ATTESTATION_PREFIX, ERASURE_PREFIX, timestamp
    from medledger.runtime import signed
    from medledger.v1 import records_pb2

    h = History()
    author, patient, other = (Ed25519PrivateKey.generate() for _ in range(3))
    h.register("doc", author, T0)
    h.register("p", patient, T0)

    def record(version: int, key: Ed25519PrivateKey) -> None:
        a = records_pb2.RecordAttestation(record_id="r-1", version=version, patient_id="p", organization_id="org",
                                          author_id="doc", author_key_id=key_id_for(raw(author)), category="Observation",
                                          commitment=bytes(32), signed_at=timestamp(T0 + timedelta(hours=version)))
        _, signature = signed.sign(key, ATTESTATION_PREFIX, a)
        event = records_pb2.RecordCreated if version == 1 else records_pb2.RecordAmended
        h.add(event(attestation=a, author_signature=signature), "records", "p", T0 + timedelta(hours=version, seconds=1))

    record(1, author)
    record(2, other)  # an amendment not signed by its author
    r = records_pb2.ErasureRequest(erasure_id="e-1", patient_id="p", signer_id="p", signer_key_id=key_id_for(raw(patient)),
                                   signed_at=timestamp(T0 + timedelta(hours=5)))
    _, signature = signed.sign(patient, ERASURE_PREFIX, r)
    h.add(records_pb2.PatientDataErased(request=r, signature=signature), "records", "p", T0 + timedelta(hours=5, seconds=1))
    outcome = pipeline.run(MemoryLedger(h.values, signer), options(signer))
    assert [(f.check, f.index) for f in only(outcome)] == [(checks.RECORD_SIGNATURE, 3)]
    assert outcome.stats.signed_statements == {checks.RECORD_SIGNATURE: 2, checks.ERASURE_SIGNATURE: 1}


def test_a_patient_signed_appointment_is_checked_and_an_organizations_needs_no_signature(signer: note.NoteSigner) -> None:
    from medledger.consent.signing import sign_appointment
    from medledger.records.domain import timestamp

    h = History()
    patient, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    h.register("p", patient, T0)
    for n, key in enumerate((patient, stranger)):
        appointment = consent_pb2.RepresentativeAppointment(
            appointment_id=f"a-{n}", patient_id="p", representative_id="rep", signer_key_id=key_id_for(raw(patient)),
            signed_at=timestamp(T0 + timedelta(hours=1 + n)))
        encoded, signature = sign_appointment(key, appointment)
        h.add(consent_pb2.RepresentativeRegistered(patient_id="p", representative_id="rep", registered_by="p",
                                                   appointment=encoded, signature=signature),
              "consent", "p", T0 + timedelta(hours=1 + n, seconds=1))
    h.add(consent_pb2.RepresentativeRegistered(patient_id="p", representative_id="guardian", registered_by="org",
                                               legal_basis=consent_pb2.LEGAL_BASIS_COURT_ORDER, evidence_sha256=bytes(32)),
          "consent", "p", T0 + timedelta(hours=3))
    outcome = pipeline.run(MemoryLedger(h.values, signer), options(signer))
    assert [(f.check, f.index) for f in only(outcome)] == [(checks.APPOINTMENT_SIGNATURE, 2)]
    assert outcome.stats.signed_statements == {checks.APPOINTMENT_SIGNATURE: 2}
