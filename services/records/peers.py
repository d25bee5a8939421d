"""What the records service asks other services, behind small ports so the
commands and reads can be tested without them.

* Consent: CheckAccess, asked with the reading user's own bearer token (the
  ``authorization`` metadata of the incoming call, copied as is;
  requester_id left empty), so consent decides for exactly the user who
  presented the token and the records service can never ask on anyone's
  behalf.
* Ledger: the entry of an event, its inclusion proof and the checkpoint it
  leads to (the ledger's ProofBundle), as the records SERVICE identity (entries
  need a SERVICE or AUDITOR token; proofs and checkpoints are public).

Authors' and erasure signers' keys are not asked of identity: they come from
the records projection of identity.events (store.command_facts,
domain.resolve_key). Identity is still called for the service's own token
(Challenge, IssueToken) and the token verification keys.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Protocol, TypeVar

import grpc

from medledger.audit.prove import bundle
from medledger.runtime.errors import DependencyUnavailable, NotFound
from medledger.runtime.grpc_status import error_for
from medledger.runtime.identity_client import ServiceCredentials
from medledger.runtime.lru import Lru
from medledger.runtime.transport import GrpcTls
from medledger.v1 import consent_pb2, consent_pb2_grpc, ledger_pb2, ledger_pb2_grpc

T = TypeVar("T")
CALL_TIMEOUT_S = 5.0
ENTRY_CACHE = 10_000  # ledger entries of recently proved events (immutable once sequenced)
Metadata = tuple[tuple[str, str], ...]


async def _call(peer: str, what: str, call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call()
    except grpc.aio.AioRpcError as exc:
        raise error_for(exc.code())(f"{peer} service, {what}: {exc.details()}") from None


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
        self, authorization: Metadata, patient_id: str, purpose: int, category: str, record_id: str
    ) -> consent_pb2.AccessDecision: ...


class ConsentGate:
    """CheckAccess on the consent service, as the reading user."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._channel: grpc.aio.Channel | None = None

    def _stub(self) -> consent_pb2_grpc.ConsentServiceStub:
        if self._channel is None:
            self._channel = GrpcTls.from_env().aio_channel(self.address)
        return consent_pb2_grpc.ConsentServiceStub(self._channel)

    async def check(
        self, authorization: Metadata, patient_id: str, purpose: int, category: str, record_id: str
    ) -> consent_pb2.AccessDecision:
        request = consent_pb2.CheckAccessRequest(
            patient_id=patient_id, purpose=purpose, category=category, record_id=record_id
        )
        stub = self._stub()
        return await _call("consent", "CheckAccess",
                           lambda: stub.CheckAccess(request, metadata=authorization, timeout=CALL_TIMEOUT_S))

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


class Prover(Protocol):
    async def prove(self, event_id: str) -> ledger_pb2.ProofBundle | None:
        """The event's proof bundle, or None while the ledger has not sequenced
        it under a checkpoint yet."""


class LedgerProver:
    def __init__(self, address: str, credentials: ServiceCredentials) -> None:
        self.address = address
        self.credentials = credentials
        self._channel: grpc.aio.Channel | None = None
        self._verifier_key = ""
        self._entries: Lru[ledger_pb2.Entry] = Lru(ENTRY_CACHE)

    def _stub(self) -> ledger_pb2_grpc.LedgerServiceStub:
        if self._channel is None:
            self._channel = GrpcTls.from_env().aio_channel(self.address)
        return ledger_pb2_grpc.LedgerServiceStub(self._channel)

    async def _key(self, stub: ledger_pb2_grpc.LedgerServiceStub) -> str:
        if not self._verifier_key:
            reply = await _call("ledger", "GetVerifierKey",
                                lambda: stub.GetVerifierKey(ledger_pb2.GetVerifierKeyRequest(), timeout=CALL_TIMEOUT_S))
            self._verifier_key = reply.verifier_key
        return self._verifier_key

    async def _entry(self, stub: ledger_pb2_grpc.LedgerServiceStub, event_id: str) -> ledger_pb2.Entry:
        """The event's ledger entry; NotFound until sequenced. Entries never
        change once sequenced (the log is append-only), so they are kept."""
        entry = self._entries.get(event_id)
        if entry is None:
            metadata = await self.credentials.metadata()
            request = ledger_pb2.GetEntryByEventIdRequest(event_id=event_id)
            entry = await _call("ledger", "GetEntryByEventId",
                                lambda: stub.GetEntryByEventId(request, metadata=metadata, timeout=CALL_TIMEOUT_S))
            self._entries.put(event_id, entry)
        return entry

    async def _inclusion(self, stub: ledger_pb2_grpc.LedgerServiceStub, index: int, tree_size: int) -> ledger_pb2.InclusionProof:
        request = ledger_pb2.GetInclusionProofRequest(index=index, tree_size=tree_size)
        return await _call("ledger", "GetInclusionProof", lambda: stub.GetInclusionProof(request, timeout=CALL_TIMEOUT_S))

    async def prove(self, event_id: str) -> ledger_pb2.ProofBundle | None:
        """One round of calls when the entry is known: the newest checkpoint
        and a proof against the ledger's current size side by side; a second
        proof only when a checkpoint was signed between the two."""
        stub = self._stub()
        known = self._entries.get(event_id)
        checkpoint_call = _call("ledger", "GetCheckpoint",
                                lambda: stub.GetCheckpoint(ledger_pb2.GetCheckpointRequest(), timeout=CALL_TIMEOUT_S))
        calls: list[Awaitable[object]] = [checkpoint_call, self._entry(stub, event_id), self._key(stub)]
        if known is not None:
            calls.append(self._inclusion(stub, known.index, 0))
        results = await asyncio.gather(*calls, return_exceptions=True)
        for result in results[:3]:
            if isinstance(result, NotFound):
                return None
            if isinstance(result, BaseException):
                raise result
        checkpoint, entry, key = results[:3]
        assert isinstance(checkpoint, ledger_pb2.Checkpoint) and isinstance(entry, ledger_pb2.Entry)
        if entry.index >= checkpoint.tree_size:
            return None
        proof = results[3] if len(results) > 3 else None  # a failed early proof is simply asked again
        if not isinstance(proof, ledger_pb2.InclusionProof) or proof.tree_size != checkpoint.tree_size:
            proof = await self._inclusion(stub, entry.index, checkpoint.tree_size)
        return bundle(entry, proof, checkpoint.checkpoint, str(key))

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


def missing_credentials() -> DependencyUnavailable:
    return DependencyUnavailable(
        "the records service has no identity credentials: set MEDLEDGER_RECORDS_IDENTITY_ID and "
        "MEDLEDGER_RECORDS_KEY_FILE"
    )
