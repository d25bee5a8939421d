"""Least privilege (issue #9, item 7), against running services.

The README's authorization matrix is the contract: the first test walks every
cell of it (every rpc the protos declare × every caller role and no token)
and checks the token-level answer, and fails for an rpc the matrix misses.
The others check the limits beyond the token that item 7 is about: network
auditors see everything, organization auditors only what concerns their
organizations' patients and members, and a SERVICE token only what a
service needs."""

from __future__ import annotations

import uuid
from typing import Callable

import grpc
import pytest

from medledger.testing.consent import grant_request, terms
from medledger.testing.identity import Party
from medledger.testing.network import ROLES, Network, call_raw, medledger_methods
from medledger.testing.network import network  # noqa: F401 - the fixture
from medledger.testing.stack import ROOT, wait_until
from medledger.testing.rpc import code_of
from medledger.v1 import consent_pb2 as cpb
from medledger.v1 import consent_pb2_grpc, ledger_pb2, ledger_pb2_grpc

Metadata = tuple[tuple[str, str], ...]
NO_TOKEN = "no token"
ADMITTED, REFUSED = frozenset({"✓", "own"}), "—"


def readme_matrix() -> dict[str, dict[str, str]]:
    """'Service.Rpc' -> column -> cell, from the README's table."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| rpc | PATIENT |"))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    matrix: dict[str, dict[str, str]] = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        matrix[cells[0]] = dict(zip(header[1:], cells[1:]))
    return matrix


def test_every_cell_of_the_readme_matrix_holds(network: Network) -> None:
    matrix = readme_matrix()
    methods = medledger_methods()
    declared = {f"{m.containing_service.name}.{m.name}" for m in methods}
    assert declared - set(matrix) == set(), "rpcs missing from the README's authorization matrix"
    assert set(matrix) - declared == set(), "the README's matrix names rpcs no proto declares"
    wrong = []
    for rpc, cells in sorted(matrix.items()):
        assert set(cells) >= {*ROLES, NO_TOKEN}, f"{rpc}: columns {sorted(cells)}"
        for column in (*ROLES, NO_TOKEN):
            cell = cells[column]
            assert cell in ADMITTED | {REFUSED}, f"{rpc} / {column}: unknown cell {cell!r}"
            metadata = network.parties[column].metadata if column in ROLES else ()
            service, method = rpc.split(".")
            descriptor = next(m for m in methods if m.containing_service.name == service and m.name == method)
            code, details = call_raw(network, descriptor, b"", metadata)
            refused_by_token = code == grpc.StatusCode.UNAUTHENTICATED or (
                code == grpc.StatusCode.PERMISSION_DENIED and "may not call" in details
            )
            expected = "refused" if cell == REFUSED else "admitted"
            if refused_by_token != (cell == REFUSED):
                wrong.append(f"{rpc} as {column}: expected {expected}, got {code.name} {details!r}")
            elif cell == REFUSED and column == NO_TOKEN and code != grpc.StatusCode.UNAUTHENTICATED:
                wrong.append(f"{rpc} without a token: {code.name}, not UNAUTHENTICATED")
            elif cell == REFUSED and column != NO_TOKEN and code != grpc.StatusCode.PERMISSION_DENIED:
                wrong.append(f"{rpc} as {column}: {code.name}, not PERMISSION_DENIED")
    assert not wrong, "the services disagree with the README's matrix:\n" + "\n".join(wrong)


# ---- the limits beyond the token --------------------------------------------------

def _grant(stub: consent_pb2_grpc.ConsentServiceStub, patient: Party, grantee: Party) -> str:
    t = terms(patient.identity_id, grantee.identity_id, signer_key_id=patient.key_id)
    reply = stub.GrantConsent(grant_request(patient.private_key, t), metadata=patient.metadata, timeout=30)
    return str(reply.terms.consent_id) if reply.terms.consent_id else t.consent_id


def test_organization_auditors_see_only_what_concerns_their_organization(network: Network) -> None:
    identity = network.identity
    hospital_a, patient_a, doctor_a = (network.parties[r] for r in ("ORGANIZATION", "PATIENT", "PRACTITIONER"))
    auditor_a, network_auditor = network.parties["ORGANIZATION_AUDITOR"], network.parties["NETWORK_AUDITOR"]
    hospital_b = identity.organization()
    patient_b, doctor_b = identity.patient(hospital_b), identity.practitioner(hospital_b)
    consent = network.stub(consent_pb2_grpc.ConsentServiceStub, "medledger.v1.ConsentService")
    a_to_a = _grant(consent, patient_a, doctor_a)
    b_to_b = _grant(consent, patient_b, doctor_b)
    b_to_a = _grant(consent, patient_b, doctor_a)  # a B patient's consent to A's member concerns A

    def sees(auditor: Party, patient: Party) -> grpc.StatusCode:
        return code_of(lambda: consent.ListConsents(cpb.ListConsentsRequest(patient_id=patient.identity_id), metadata=auditor.metadata, timeout=30))

    def reads(auditor: Party, consent_id: str) -> grpc.StatusCode:
        return code_of(lambda: consent.GetConsent(cpb.GetConsentRequest(consent_id=consent_id), metadata=auditor.metadata, timeout=30))

    wait_until(lambda: reads(network_auditor, b_to_a) == grpc.StatusCode.OK, 30, what="the consents in consent's view")
    OK, DENIED = grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED
    # the organization auditor: its hospital's patient and member, nothing of B's own
    assert sees(auditor_a, patient_a) == OK
    assert sees(auditor_a, patient_b) == DENIED
    assert code_of(lambda: consent.WhoCanAccess(cpb.WhoCanAccessRequest(patient_id=patient_b.identity_id), metadata=auditor_a.metadata, timeout=30)) == DENIED
    assert (reads(auditor_a, a_to_a), reads(auditor_a, b_to_a), reads(auditor_a, b_to_b)) == (OK, OK, DENIED)
    assert code_of(lambda: consent.ExportFhirConsent(cpb.ExportFhirConsentRequest(consent_id=b_to_b), metadata=auditor_a.metadata, timeout=30)) == DENIED
    assert code_of(lambda: consent.ListPendingReviews(cpb.ListPendingReviewsRequest(organization_id=hospital_b.identity_id), metadata=auditor_a.metadata, timeout=30)) == DENIED
    assert code_of(lambda: consent.ListPendingReviews(cpb.ListPendingReviewsRequest(organization_id=hospital_a.identity_id), metadata=auditor_a.metadata, timeout=30)) == OK
    # the network auditor: everything
    assert (sees(network_auditor, patient_a), sees(network_auditor, patient_b)) == (OK, OK)
    assert reads(network_auditor, b_to_b) == OK
    # a hospital cannot make itself a network auditor: one it registers audits only it
    own_auditor = identity.organization_auditor(hospital_b)
    assert (sees(own_auditor, patient_b), sees(own_auditor, patient_a)) == (OK, DENIED)


def test_a_service_token_reads_only_what_a_service_needs(network: Network) -> None:
    patient, doctor, service = (network.parties[r] for r in ("PATIENT", "PRACTITIONER", "SERVICE"))
    auditors = network.parties["NETWORK_AUDITOR"], network.parties["ORGANIZATION_AUDITOR"]
    consent = network.stub(consent_pb2_grpc.ConsentServiceStub, "medledger.v1.ConsentService")
    ledger = network.stub(ledger_pb2_grpc.LedgerServiceStub, "medledger.v1.LedgerService")
    consent_id = _grant(consent, patient, doctor)
    # any SERVICE used to read every consent; one that is no member of the grantee organization reads none
    assert code_of(lambda: consent.GetConsent(cpb.GetConsentRequest(consent_id=consent_id), metadata=service.metadata, timeout=30)) == grpc.StatusCode.PERMISSION_DENIED
    assert code_of(lambda: consent.ListConsents(cpb.ListConsentsRequest(patient_id=patient.identity_id), metadata=service.metadata, timeout=30)) == grpc.StatusCode.PERMISSION_DENIED
    # a member SERVICE of the grantee organization (e.g. the hospital's integration engine) may
    member_service = network.identity.service(network.parties["ORGANIZATION"])
    granted_to_hospital = _grant(consent, patient, network.parties["ORGANIZATION"])
    wait_until(lambda: code_of(lambda: consent.GetConsent(cpb.GetConsentRequest(consent_id=granted_to_hospital), metadata=member_service.metadata, timeout=30)) == grpc.StatusCode.OK,
               30, what="the grant to the hospital in consent's view")

    # the ledger: one entry by event id for a service, the whole log only for a network auditor
    event_id = patient.event_ids[0]
    wait_until(lambda: code_of(lambda: ledger.GetEntryByEventId(ledger_pb2.GetEntryByEventIdRequest(event_id=event_id), metadata=auditors[0].metadata, timeout=30)) == grpc.StatusCode.OK,
               60, what="the patient's registration on the ledger")
    entry = ledger.GetEntryByEventId(ledger_pb2.GetEntryByEventIdRequest(event_id=event_id), metadata=service.metadata, timeout=30)
    assert entry.event_id == event_id
    # its proof bundle holds the same entry: the same readers
    wait_until(lambda: code_of(lambda: ledger.GetProofBundle(ledger_pb2.GetProofBundleRequest(event_id=event_id), metadata=service.metadata, timeout=30)) == grpc.StatusCode.OK,
               60, what="a checkpoint over the patient's registration")
    assert ledger.GetProofBundle(ledger_pb2.GetProofBundleRequest(event_id=event_id), metadata=service.metadata, timeout=30).entry == entry
    assert code_of(lambda: ledger.GetProofBundle(ledger_pb2.GetProofBundleRequest(event_id=event_id), metadata=auditors[1].metadata, timeout=30)) == grpc.StatusCode.PERMISSION_DENIED
    whole_log = ledger_pb2.GetEntriesRequest(start=0, count=10)
    assert code_of(lambda: list(ledger.GetEntries(whole_log, metadata=service.metadata, timeout=30))) == grpc.StatusCode.PERMISSION_DENIED
    assert code_of(lambda: list(ledger.GetEntryPages(whole_log, metadata=service.metadata, timeout=30))) == grpc.StatusCode.PERMISSION_DENIED
    assert list(ledger.GetEntries(whole_log, metadata=auditors[0].metadata, timeout=30))
    # an organization auditor reads no raw entry: each says who did what to whom anywhere
    assert code_of(lambda: list(ledger.GetEntryPages(whole_log, metadata=auditors[1].metadata, timeout=30))) == grpc.StatusCode.PERMISSION_DENIED
    assert code_of(lambda: ledger.GetEntryByEventId(ledger_pb2.GetEntryByEventIdRequest(event_id=event_id), metadata=auditors[1].metadata, timeout=30)) == grpc.StatusCode.PERMISSION_DENIED
    assert uuid.UUID(event_id)  # a real event id, not a guessable number
