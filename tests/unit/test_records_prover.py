"""The records service's proof lookup (medledger.records.peers.LedgerProver)
against a stand-in ledger stub: one GetProofBundle call as the records
SERVICE identity; the bundle comes back as the ledger built it and verifies
against its own checkpoint; NOT_FOUND (never sequenced, or sequenced but not
under a checkpoint yet) is PENDING (None); any other failure is an error."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import grpc
import pytest
from prometheus_client import REGISTRY

from medledger.audit.prove import verify_bundle
from medledger.ledger import merkle, note, proofs
from medledger.records.peers import LedgerProver, discard
from medledger.runtime.errors import DependencyUnavailable
from medledger.runtime.identity_client import ServiceCredentials
from medledger.v1 import ledger_pb2, ledger_pb2_grpc

ORIGIN = "records.test/log"
TOKEN = (("authorization", "Bearer records-service"),)


class FakeCredentials:
    async def metadata(self) -> tuple[tuple[str, str], ...]:
        return TOKEN


def signed_bundle(signer: note.NoteSigner, size: int, index: int) -> ledger_pb2.ProofBundle:
    """What the ledger serves: entry ``index`` of a log of ``size`` events,
    proved against the checkpoint of that size."""
    tree, nodes, entries = merkle.CompactRange.empty(), {}, []
    for i in range(size):
        event = f"event {i}".encode()
        leaf = merkle.leaf_hash(event)
        nodes.update(dict(tree.append(leaf)))
        entries.append(ledger_pb2.Entry(index=i, event=event, leaf_hash=leaf))
    plan = merkle.inclusion_plan(index, size)
    path = ledger_pb2.InclusionProof(leaf_index=index, tree_size=size,
                                     hashes=merkle.assemble(plan, [nodes[i] for i in plan.ids]))
    checkpoint = signer.sign(note.checkpoint_body(note.Checkpoint(ORIGIN, size, tree.root())))
    return proofs.bundle(entries[index], path, checkpoint, signer.verifier_key)


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class FakeLedger:
    """Answers GetProofBundle like the ledger's stub: the bundle for a known
    event id, else the given status; nothing else may be called."""

    def __init__(self, bundles: dict[str, ledger_pb2.ProofBundle], failure: grpc.StatusCode = grpc.StatusCode.NOT_FOUND) -> None:
        self.bundles, self.failure = bundles, failure
        self.calls: list[tuple[str, Any]] = []

    async def GetProofBundle(self, request: ledger_pb2.GetProofBundleRequest, metadata: Any = None, **_: Any) -> ledger_pb2.ProofBundle:
        self.calls.append((request.event_id, metadata))
        if request.event_id in self.bundles:
            return self.bundles[request.event_id]
        raise rpc_error(self.failure, f"no proof for {request.event_id}")


class FakeLedgerProver(LedgerProver):
    """The real LedgerProver with its stub replaced by a FakeLedger."""

    def __init__(self, ledger: FakeLedger) -> None:
        # FakeCredentials has metadata(), all that prove() asks of ServiceCredentials
        super().__init__("127.0.0.1:1", cast(ServiceCredentials, FakeCredentials()))
        self.ledger = ledger

    def _stub(self) -> ledger_pb2_grpc.LedgerServiceStub:
        # FakeLedger has GetProofBundle, the only call prove() makes on the stub
        return cast(ledger_pb2_grpc.LedgerServiceStub, self.ledger)


def prover_for(ledger: FakeLedger) -> LedgerProver:
    return FakeLedgerProver(ledger)


async def test_one_call_as_the_service_and_the_bundle_verifies_against_its_own_checkpoint() -> None:
    signer = note.NoteSigner.generate(ORIGIN)
    served = signed_bundle(signer, size=11, index=6)
    ledger = FakeLedger({"event-1": served})
    proved = await prover_for(ledger).prove("event-1")
    assert proved == served
    assert ledger.calls == [("event-1", TOKEN)], "one round trip, with the records service's token"
    result = verify_bundle(proved, note.NoteVerifier.from_verifier_key(signer.verifier_key))
    assert result.findings == [] and result.checkpoint_size == 11
    assert proved.verifier_key_name == f"{signer.name}+{signer.key_hash.hex()}"
    # a bundle that mixes a proof with a different checkpoint is what one call rules out: it would not verify
    mixed = ledger_pb2.ProofBundle()
    mixed.CopyFrom(served)
    mixed.checkpoint = signed_bundle(signer, size=12, index=6).checkpoint
    assert not verify_bundle(mixed, note.NoteVerifier.from_verifier_key(signer.verifier_key)).valid


async def test_not_found_is_pending_whether_unknown_or_not_yet_under_a_checkpoint() -> None:
    ledger = FakeLedger({})
    prover = prover_for(ledger)
    assert await prover.prove("unknown") is None
    assert await prover.prove("sequenced-not-yet-signed") is None
    assert [event for event, _ in ledger.calls] == ["unknown", "sequenced-not-yet-signed"]


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
async def test_an_unreachable_ledger_is_an_error_not_pending(code: grpc.StatusCode) -> None:
    with pytest.raises(DependencyUnavailable, match="ledger service, GetProofBundle"):
        await prover_for(FakeLedger({}, failure=code)).prove("event-1")


def _calls_counted(method: str) -> float:
    labels = {"grpc_service": "medledger.v1.LedgerService", "grpc_method": method}
    return REGISTRY.get_sample_value("medledger_records_peer_call_seconds_count", labels) or 0.0


async def test_each_answered_or_failed_call_is_timed_as_records_waits_for_it_and_a_dropped_one_is_not() -> None:
    signer = note.NoteSigner.generate(ORIGIN)
    before = _calls_counted("GetProofBundle")
    await prover_for(FakeLedger({"event-1": signed_bundle(signer, size=3, index=1)})).prove("event-1")
    await prover_for(FakeLedger({})).prove("pending")  # NOT_FOUND: answered, pending
    with pytest.raises(DependencyUnavailable):
        await prover_for(FakeLedger({}, failure=grpc.StatusCode.UNAVAILABLE)).prove("event-1")
    assert _calls_counted("GetProofBundle") == before + 3

    class Stalled(FakeLedger):
        async def GetProofBundle(self, request: ledger_pb2.GetProofBundleRequest, metadata: Any = None, **_: Any) -> ledger_pb2.ProofBundle:
            await asyncio.Event().wait()
            raise AssertionError("never answered")

    dropped = asyncio.ensure_future(prover_for(Stalled({})).prove("event-1"))
    await asyncio.sleep(0.01)
    await discard(dropped)
    assert _calls_counted("GetProofBundle") == before + 3
