"""What the records service asks other services, behind small ports so the
commands and reads can be tested without them.

* Consent: CheckAccess, asked with the reading user's own bearer token (the
  ``authorization`` metadata of the incoming call, copied as is;
  requester_id left empty), so consent decides for exactly the user who
  presented the token and the records service can never ask on anyone's
  behalf.
* Ledger: the entry of an event, its inclusion proof and the checkpoint it
  leads to (the ledger's ProofBundle, one GetProofBundle call), as the records
  SERVICE identity (entries need a SERVICE or AUDITOR token).

Authors' and erasure signers' keys are not asked of identity: they come from
the records projection of identity.events (store.command_facts,
domain.resolve_key). Identity is still called for the service's own token
(Challenge, IssueToken) and the token verification keys.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Protocol, TypeVar

import grpc

from medledger.records import metrics
from medledger.records.domain import PurposeCode
from medledger.runtime.errors import DependencyUnavailable, NotFound
from medledger.runtime.grpc_status import error_for
from medledger.runtime.identity_client import ServiceCredentials
from medledger.runtime.transport import LazyStub
from medledger.v1 import consent_pb2, consent_pb2_grpc, ledger_pb2, ledger_pb2_grpc

T = TypeVar("T")
CALL_TIMEOUT_S = 5.0
Metadata = tuple[tuple[str, str], ...]


# The peers' gRPC services, as the grpc_service label of metrics.PEER_CALL_SECONDS names them.
PEER_SERVICES = {
    "consent": consent_pb2.DESCRIPTOR.services_by_name["ConsentService"].full_name,
    "ledger": ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name,
}


async def _call(peer: str, what: str, call: Callable[[], Awaitable[T]]) -> T:
    """One call to a peer, timed as this service waits for it until the answer
    or error (metrics.PEER_CALL_SECONDS); a call dropped unanswered (a read
    refused meanwhile) is not counted."""
    timer = metrics.PEER_CALL_SECONDS.labels(PEER_SERVICES[peer], what)
    started = time.perf_counter()
    try:
        answer = await call()
    except grpc.aio.AioRpcError as exc:
        timer.observe(time.perf_counter() - started)
        raise error_for(exc.code())(f"{peer} service, {what}: {exc.details()}") from None
    timer.observe(time.perf_counter() - started)
    return answer


async def discard(task: asyncio.Future[Any] | None) -> None:
    """Drop a call started ahead of a check that then refused: its outcome
    (even an unreachable peer) no longer matters, but it must end before
    the request does (and before any connection it uses goes back)."""
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def forwarded_authorization(metadata: object) -> Metadata:
    """Only the caller's own bearer token, nothing else from the incoming call."""
    return tuple((k, str(v)) for k, v in (metadata or ()) if k == "authorization")  # type: ignore[attr-defined]


class AccessGate(Protocol):
    async def check(
        self, authorization: Metadata, patient_id: str, purpose: PurposeCode, category: str, record_id: str
    ) -> consent_pb2.AccessDecision: ...


class ConsentGate:
    """CheckAccess on the consent service, as the reading user."""

    def __init__(self, address: str) -> None:
        self._consent = LazyStub(address, consent_pb2_grpc.ConsentServiceStub)

    def _stub(self) -> consent_pb2_grpc.ConsentServiceStub:
        return self._consent.stub()

    async def check(
        self, authorization: Metadata, patient_id: str, purpose: PurposeCode, category: str, record_id: str
    ) -> consent_pb2.AccessDecision:
        request = consent_pb2.CheckAccessRequest(
            patient_id=patient_id, purpose=purpose, category=category, record_id=record_id
        )
        stub = self._stub()
        return await _call("consent", "CheckAccess",
                           lambda: stub.CheckAccess(request, metadata=authorization, timeout=CALL_TIMEOUT_S))

    async def close(self) -> None:
        await self._consent.close()


class Prover(Protocol):
    async def prove(self, event_id: str) -> ledger_pb2.ProofBundle | None:
        """The event's proof bundle, or None while the ledger has not sequenced
        it under a checkpoint yet."""


class LedgerProver:
    """GetProofBundle on the ledger, as the records SERVICE identity: one
    round trip, and the entry, proof and checkpoint agree by construction."""

    def __init__(self, address: str, credentials: ServiceCredentials) -> None:
        self.credentials = credentials
        self._ledger = LazyStub(address, ledger_pb2_grpc.LedgerServiceStub)

    def _stub(self) -> ledger_pb2_grpc.LedgerServiceStub:
        return self._ledger.stub()

    async def prove(self, event_id: str) -> ledger_pb2.ProofBundle | None:
        """None (pending) on NOT_FOUND: not sequenced yet, or sequenced but
        not under a signed checkpoint yet."""
        stub = self._stub()
        metadata = await self.credentials.metadata()
        request = ledger_pb2.GetProofBundleRequest(event_id=event_id)
        try:
            return await _call("ledger", "GetProofBundle",
                               lambda: stub.GetProofBundle(request, metadata=metadata, timeout=CALL_TIMEOUT_S))
        except NotFound:
            return None

    async def close(self) -> None:
        await self._ledger.close()


def missing_credentials() -> DependencyUnavailable:
    return DependencyUnavailable(
        "the records service has no identity credentials: set MEDLEDGER_RECORDS_IDENTITY_ID and "
        "MEDLEDGER_RECORDS_KEY_FILE"
    )
