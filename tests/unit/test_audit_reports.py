"""What auditors and patients are handed: the accounting of disclosures and
access report in every format (the FHIR one validated as R4 AuditEvents),
offline proof bundles that verify and tampered ones that do not, the
disclosure index file, and the replay's row-by-row comparison."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fhir.resources.R4B.bundle import Bundle

from medledger.audit import checks, disclosures, index, prove
from medledger.audit.compare import diff_rows
from medledger.audit.envelopes import PatientEvent, check_envelopes, pinned_verifier
from medledger.ledger import merkle, note, proofs
from medledger.runtime.envelope import envelope, parse_producer_keys
from medledger.testing.stack import PRODUCERS
from medledger.v1 import consent_pb2, ledger_pb2, records_pb2

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)
PATIENT = "patient-1"


def sealed(payload: object, producer: str, at: datetime, actor: str = "doc-1") -> bytes:
    return PRODUCERS.seal(envelope(payload, aggregate_id=PATIENT, producer=producer, actor=actor, occurred_at=at))  # type: ignore[arg-type]


def patient_history() -> list[tuple[int, bytes]]:
    allow = consent_pb2.AccessDecided(
        requester_id="doc-1", patient_id=PATIENT, purpose=consent_pb2.PURPOSE_TREATMENT, category="Observation",
        decision=consent_pb2.DECISION_ALLOW, reason=consent_pb2.REASON_CONSENT, consent_id="c-1", asked_by="records",
    )
    deny = consent_pb2.AccessDecided(
        requester_id="doc-2", patient_id=PATIENT, purpose=consent_pb2.PURPOSE_RESEARCH, record_id="r-9",
        decision=consent_pb2.DECISION_DENY, reason=consent_pb2.REASON_NO_CONSENT, asked_by="records",
    )
    glass = consent_pb2.BreakGlassInvoked(
        break_glass_id="bg-1", patient_id=PATIENT, practitioner_id="doc-3", organization_id="org-1",
        justification_sha256=b"\x01" * 32, review_required=True,
    )
    disclosed = records_pb2.RecordsDisclosed(
        disclosure_id="d-1", requester_id="doc-1", organization_id="org-1", patient_id=PATIENT,
        purpose=consent_pb2.PURPOSE_TREATMENT, basis=records_pb2.DISCLOSURE_BASIS_CONSENT, consent_id="c-1",
        operation="GetRecord", records=[records_pb2.DisclosedRecord(record_id="r-1", version=2, category="Observation")],
    )
    reviewed = consent_pb2.BreakGlassReviewed(
        break_glass_id="bg-1", patient_id=PATIENT, organization_id="org-1", outcome=consent_pb2.REVIEW_STATUS_APPROVED,
        reviewer_id="auditor-1",
    )
    return [
        (14, sealed(reviewed, "consent", T0 + timedelta(days=3), actor="auditor-1")),
        (10, sealed(allow, "consent", T0)),
        (11, sealed(deny, "consent", T0 + timedelta(hours=1), actor="doc-2")),
        (12, sealed(glass, "consent", T0 + timedelta(days=1), actor="doc-3")),
        (13, sealed(disclosed, "records", T0 + timedelta(days=2))),
    ]


def test_the_report_lists_disclosures_decisions_and_break_glass_with_ledger_indices() -> None:
    r = disclosures.report(PATIENT, patient_history())
    assert [(l.index, l.kind) for l in r.accesses] == [
        (10, disclosures.DECISION), (11, disclosures.DECISION), (12, disclosures.BREAK_GLASS), (14, disclosures.REVIEW)]
    allow, deny, glass, review = r.accesses
    assert (allow.recipient, allow.purpose, allow.decision, allow.reason, allow.basis, allow.asked_by) == (
        "doc-1", "TREAT", "ALLOW", "CONSENT", "c-1", "records")
    assert all(line.event_id for line in r.lines)
    assert (deny.decision, deny.reason, deny.what, deny.purpose) == ("DENY", "NO_CONSENT", "record r-9", "HRESCH")
    assert glass.recipient == "doc-3" and glass.purpose == "ETREAT" and glass.review == "APPROVED at entry 14"
    assert (review.recipient, review.basis, review.review) == ("auditor-1", "bg-1", "APPROVED")
    [disclosed] = r.disclosures
    assert (disclosed.index, disclosed.recipient, disclosed.what, disclosed.purpose, disclosed.basis) == (
        13, "doc-1", "Observation r-1 v2", "TREAT", "CONSENT c-1")


def test_since_and_until_bound_the_report() -> None:
    r = disclosures.report(PATIENT, patient_history(), since=T0 + timedelta(minutes=30), until=T0 + timedelta(days=2))
    assert [l.index for l in r.lines] == [11, 12]


def test_json_and_csv_carry_every_line() -> None:
    r = disclosures.report(PATIENT, patient_history())
    data = json.loads(disclosures.render(r, "json"))
    assert [d["index"] for d in data["disclosures"]] == [13]
    assert [d["index"] for d in data["accesses"]] == [10, 11, 12, 14]
    rows = list(csv.DictReader(io.StringIO(disclosures.render(r, "csv"))))
    assert [(row["index"], row["kind"], row["decision"]) for row in rows] == [
        ("10", "access decision", "ALLOW"), ("11", "access decision", "DENY"), ("12", "break-glass", ""),
        ("13", "disclosure", ""), ("14", "break-glass review", "")]


def test_fhir_output_is_a_valid_bundle_of_balp_audit_events() -> None:
    text = disclosures.render(disclosures.report(PATIENT, patient_history()), "fhir")
    bundle = Bundle.model_validate_json(text)
    assert bundle.entry is not None
    types = []
    for e in bundle.entry:
        assert e.resource is not None
        types.append(e.resource.get_resource_type())
    assert types == ["AuditEvent"] * 5
    decided, denied, _, read, _ = json.loads(text)["entry"]
    assert decided["resource"]["outcome"] == "0" and denied["resource"]["outcome"] == "8"
    assert decided["resource"]["type"]["code"] == "110113"
    assert decided["resource"]["meta"]["profile"] == [disclosures.BALP + "IHE.BasicAudit.AuthZconsent"]
    assert read["resource"]["action"] == "R" and read["resource"]["meta"]["profile"] == [
        disclosures.BALP + "IHE.BasicAudit.PatientRead"]
    assert read["resource"]["agent"][0]["purposeOfUse"][0]["coding"][0]["code"] == "TREAT"
    ledger_index = [e for e in read["resource"]["entity"] if e["what"].get("identifier", {}).get("system") ==
                    disclosures.LEDGER_INDEX_SYSTEM]
    assert ledger_index[0]["what"]["identifier"]["value"] == "13"


def test_the_index_file_answers_per_patient_and_only_once_committed(tmp_path: Path) -> None:
    producers = pinned_verifier(parse_producer_keys(PRODUCERS.keys_text))
    found = check_envelopes([(i, v, "") for i, v in patient_history()], producers, index_patients=True)
    assert not found.findings and len(found.patient_events) == 5
    path = tmp_path / "audit.idx"
    writer = index.IndexWriter(path)
    writer.add(found.patient_events)
    writer.add([PatientEvent("someone-else", 99, "x", T0, b"")])
    with pytest.raises(index.BadIndexFile):
        index.read(path, PATIENT)  # not there until the verification succeeded
    writer.commit(index.IndexInfo(14, "ab" * 32, "key", T0.isoformat(), "test"))
    info, entries = index.read(path, PATIENT)
    assert info.tree_size == 14 and [i for i, _ in entries] == [10, 11, 12, 13, 14]
    assert index.read(path, "nobody")[1] == []


# ---- proof bundles ---------------------------------------------------------------

ORIGIN = "audit.test/log"


def bundle_for(values: list[bytes], index_: int, signer: note.NoteSigner) -> ledger_pb2.ProofBundle:
    tree, nodes, chain, entries = merkle.CompactRange.empty(), {}, merkle.GENESIS_CHAIN, []
    for i, v in enumerate(values):
        leaf = merkle.leaf_hash(v)
        chain = merkle.chain_hash(chain, leaf)
        nodes.update(dict(tree.append(leaf)))
        entries.append(ledger_pb2.Entry(index=i, event=v, leaf_hash=leaf, chain_hash=chain))
    plan = merkle.inclusion_plan(index_, tree.size)
    path = ledger_pb2.InclusionProof(leaf_index=index_, tree_size=tree.size,
                                     hashes=merkle.assemble(plan, [nodes[i] for i in plan.ids]))
    signed = signer.sign(note.checkpoint_body(note.Checkpoint(ORIGIN, tree.size, tree.root())))
    return proofs.bundle(entries[index_], path, signed, signer.verifier_key)


def test_a_proof_bundle_verifies_offline_and_survives_its_json_form() -> None:
    signer = note.NoteSigner.generate(ORIGIN)
    values = [v for _, v in patient_history()[1:]] * 3  # 12 entries; entry 7 is the disclosure
    made = bundle_for(values, 7, signer)
    assert made.verifier_key_name == f"{signer.name}+{signer.key_hash.hex()}"
    again = prove.from_json(prove.to_json(made))
    producers = pinned_verifier(parse_producer_keys(PRODUCERS.keys_text))
    result = prove.verify_bundle(again, note.NoteVerifier.from_verifier_key(signer.verifier_key), producers)
    assert result.valid and result.checkpoint_size == 12 and result.event_type == "medledger.v1.RecordsDisclosed"


@pytest.mark.parametrize("tamper", ["event", "proof hash", "index", "checkpoint", "key"])
def test_a_tampered_proof_bundle_does_not_verify(tamper: str) -> None:
    signer = note.NoteSigner.generate(ORIGIN)
    values = [v for _, v in patient_history()[1:]] * 3  # 12 entries; entry 7 is the disclosure
    made = bundle_for(values, 7, signer)
    key = note.NoteVerifier.from_verifier_key(signer.verifier_key)
    if tamper == "event":
        made.entry.event = made.entry.event.replace(b"doc-1", b"doc-4")
        made.entry.leaf_hash = merkle.leaf_hash(made.entry.event)  # a consistent lie
    elif tamper == "proof hash":
        made.inclusion_proof.hashes[1] = bytes(32)
    elif tamper == "index":
        made.entry.index = made.inclusion_proof.leaf_index = 6
    elif tamper == "checkpoint":
        made.checkpoint = made.checkpoint.replace(b"\n12\n", b"\n13\n")
    else:
        key = note.NoteVerifier.from_verifier_key(note.NoteSigner.generate(ORIGIN).verifier_key)
    result = prove.verify_bundle(made, key)
    assert not result.valid
    assert result.findings[0].check in (checks.INCLUSION_PROOF, prove.CHECKPOINT)


def test_rows_are_compared_column_by_column() -> None:
    rebuilt = [{"id": "a", "x": 1, "t": T0}, {"id": "b", "x": 2, "t": T0}]
    live = [{"id": "a", "x": 1, "t": T0 + timedelta(seconds=1)}, {"id": "c", "x": 3, "t": T0}]
    found = diff_rows("consent", "consents", ("id",), rebuilt, live)
    assert [(d.key, d.column, d.live) for d in found] == [("a", "t", (T0 + timedelta(seconds=1)).isoformat()),
                                                          ("b", "", "missing"), ("c", "", "present")]
    assert "only in the events" in found[1].describe() and "only in the live database" in found[2].describe()
