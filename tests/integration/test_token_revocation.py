"""Tokens at the services that verify them offline (issue 9, item 10), on the
real stack: each service accepts only tokens for itself, and a token whose
subject was revoked, or that lists a membership ended since it was issued,
stops working everywhere, not only at identity, well before it expires."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import grpc
import pytest

from medledger.v1 import consent_pb2 as pb
from medledger.v1 import consent_pb2_grpc, identity_pb2, ledger_pb2, ledger_pb2_grpc
from medledger.testing.consent import consent_env
from medledger.testing.identity import IdentityHarness
from medledger.testing.stack import ServiceProcess, all_serving, wait_until
from medledger.testing.rpc import code_of

pytestmark = pytest.mark.timeout(240)
REFUSED_WITHIN_S = 30  # MEDLEDGER_TOKEN_REVOCATION_MAX_STALENESS_S is 5 s; generous for a loaded machine


def test_services_refuse_other_audiences_and_tokens_revoked_since_issue(
    identity_service: IdentityHarness, spawn: Callable[..., ServiceProcess], tmp_path: Path
) -> None:
    ids = identity_service
    org = ids.organization()
    doc, patient, auditor = ids.practitioner(org), ids.patient(org), ids.auditor()  # registered by the operator
    ledger, consent = spawn("ledger"), spawn("consent", **consent_env(ids, tmp_path))
    all_serving(ledger, consent)
    with grpc.insecure_channel(ledger.address) as lc, grpc.insecure_channel(consent.address) as cc:
        entries, decisions = ledger_pb2_grpc.LedgerServiceStub(lc), consent_pb2_grpc.ConsentServiceStub(cc)

        def read_entry(metadata: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
            request = ledger_pb2.GetEntryByEventIdRequest(event_id="0190a1b2-0000-7000-8000-000000000000")
            return code_of(lambda: entries.GetEntryByEventId(request, metadata=metadata, timeout=5))

        def check(metadata: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
            request = pb.CheckAccessRequest(patient_id=patient.identity_id, purpose=pb.PURPOSE_TREATMENT, category="Observation")
            return code_of(lambda: decisions.CheckAccess(request, metadata=metadata, timeout=5))

        # Authenticated (an unknown entry is NOT_FOUND; a decision is an answer), then each audience alone.
        assert read_entry(auditor.metadata) == grpc.StatusCode.NOT_FOUND
        assert check(doc.metadata) == grpc.StatusCode.OK
        assert read_entry(ids.token_for(auditor, "identity", "consent")) == grpc.StatusCode.UNAUTHENTICATED
        assert read_entry(ids.token_for(auditor, "ledger")) == grpc.StatusCode.NOT_FOUND
        assert check(ids.token_for(doc, "ledger")) == grpc.StatusCode.UNAUTHENTICATED

        # The practitioner's membership ends: its token, which lists the organization, stops working at consent.
        membership = ids.stub.GetIdentity(identity_pb2.GetIdentityRequest(identity_id=doc.identity_id),
                                          metadata=org.metadata).memberships[0]
        ids.stub.EndMembership(identity_pb2.EndMembershipRequest(membership_id=membership.membership_id), metadata=org.metadata)
        wait_until(lambda: check(doc.metadata) == grpc.StatusCode.UNAUTHENTICATED, REFUSED_WITHIN_S, 0.2,
                   "consent refusing a token that lists an ended membership")
        assert check(ids.login(doc).metadata) == grpc.StatusCode.OK  # a new token no longer lists it

        # The auditor is revoked: its unexpired token stops working at the ledger.
        ids.stub.RevokeIdentity(identity_pb2.RevokeIdentityRequest(identity_id=auditor.identity_id,
                                                                   reason=identity_pb2.AFFILIATION_CHANGED),
                                metadata=ids.operator.metadata)
        wait_until(lambda: read_entry(auditor.metadata) == grpc.StatusCode.PERMISSION_DENIED, REFUSED_WITHIN_S, 0.2,
                   "the ledger refusing a revoked auditor's token")
    assert consent.proc is not None and consent.proc.poll() is None
