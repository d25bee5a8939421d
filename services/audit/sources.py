"""Where an audit reads the log: the ledger's gRPC API (entries with an
AUDITOR token, checkpoints and proofs without), or the ledger's own topics
(ledger.entries and ledger.checkpoints, read with the PositionedConsumer).
Adapters only: they turn transport failures into the runtime's errors
(DependencyUnavailable, Unauthenticated, PermissionDenied, NotFound), which
the CLI maps to its exit codes.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Iterator, Sequence, TypeVar

import grpc

from medledger.audit.checks import EntryLike, ListedCheckpoint
from medledger.runtime.errors import DependencyUnavailable, MedLedgerError, NotFound, OutOfRange, PermissionDenied
from medledger.runtime.errors import Unauthenticated
from medledger.runtime.transport import GrpcTls
from medledger.v1 import events_pb2, ledger_pb2, ledger_pb2_grpc

T = TypeVar("T")
class LedgerError(MedLedgerError):
    """The ledger answered a well-formed request with an error of its own."""


MAX_ENTRIES_PER_CALL = 100_000  # the ledger's cap per GetEntryPages call
TIMEOUT_S = 30.0


def _translate(exc: grpc.RpcError, what: str) -> Exception:
    code = exc.code()
    detail = exc.details() or code.name
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return DependencyUnavailable(f"{what}: the ledger is unreachable ({detail})")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(f"{what}: {detail}; entries need an AUDITOR token (--token or MEDLEDGER_TOKEN)")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(f"{what}: {detail}; entries need an AUDITOR or SERVICE token")
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(f"{what}: {detail}")
    if code == grpc.StatusCode.OUT_OF_RANGE:
        return OutOfRange(f"{what}: {detail}")
    return LedgerError(f"{what}: the ledger answered {code.name}: {detail}")


class GrpcLedger:
    """The ledger's LedgerService."""

    serves_proofs = True

    def __init__(self, address: str, token: str = "", tls: GrpcTls | None = None) -> None:
        self.name = f"ledger {address} (gRPC)"
        self.address = address
        self._channel = (tls or GrpcTls.from_env()).channel(address)
        self.stub = ledger_pb2_grpc.LedgerServiceStub(self._channel)
        self.metadata = [("authorization", f"Bearer {token}")] if token else []

    def close(self) -> None:
        self._channel.close()

    def _call(self, what: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except grpc.RpcError as exc:
            raise _translate(exc, what) from None

    def verifier_key(self) -> ledger_pb2.VerifierKey:
        return self._call("GetVerifierKey", lambda: self.stub.GetVerifierKey(
            ledger_pb2.GetVerifierKeyRequest(), timeout=TIMEOUT_S))

    def latest(self) -> ledger_pb2.Checkpoint:
        return self._call("GetCheckpoint", lambda: self.stub.GetCheckpoint(
            ledger_pb2.GetCheckpointRequest(), timeout=TIMEOUT_S))

    def checkpoints(self) -> list[ListedCheckpoint]:
        found: list[ListedCheckpoint] = []
        start: int | None = 0
        while start is not None:
            request = ledger_pb2.ListCheckpointsRequest(start_size=start, page_size=1000)
            page = self._call("ListCheckpoints", lambda: self.stub.ListCheckpoints(request, timeout=TIMEOUT_S))
            found += [ListedCheckpoint(c.tree_size, c.checkpoint, c.chain_hash) for c in page.checkpoints]
            start = page.next_start_size if page.HasField("next_start_size") else None
        return found

    def pages(self, start: int, end: int) -> Iterator[Sequence[EntryLike]]:
        position = start
        while position < end:
            request = ledger_pb2.GetEntriesRequest(start=position, count=min(MAX_ENTRIES_PER_CALL, end - position))
            stream = self.stub.GetEntryPages(request, metadata=self.metadata, timeout=600)
            last = -1
            try:
                for page in stream:
                    entries = page.entries
                    if not entries:
                        continue
                    last = entries[-1].index
                    if last >= end:  # a damaged index column: never read past the goal
                        entries = [e for e in entries if e.index < end]
                    if entries:
                        yield entries
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.OUT_OF_RANGE:
                    return  # fewer rows than the checkpoints cover: the replay reports what is missing
                raise _translate(exc, "GetEntryPages") from None
            if last < position:
                return
            position = last + 1

    def proof_bundle(self, event_id: str) -> ledger_pb2.ProofBundle:
        """The event's entry, the latest checkpoint and the proof between them, in one call."""
        return self._call("GetProofBundle", lambda: self.stub.GetProofBundle(
            ledger_pb2.GetProofBundleRequest(event_id=event_id), metadata=self.metadata, timeout=TIMEOUT_S))

    def consistency_proof(self, first: int, second: int) -> list[bytes] | None:
        request = ledger_pb2.GetConsistencyProofRequest(first_size=first, second_size=second)
        reply = self._call("GetConsistencyProof", lambda: self.stub.GetConsistencyProof(request, timeout=TIMEOUT_S))
        return list(reply.hashes)

    def inclusion(self, index: int, size: int) -> ledger_pb2.InclusionProof:
        request = ledger_pb2.GetInclusionProofRequest(index=index, tree_size=size)
        return self._call("GetInclusionProof", lambda: self.stub.GetInclusionProof(request, timeout=TIMEOUT_S))

    def inclusion_proof(self, index: int, size: int) -> list[bytes] | None:
        return list(self.inclusion(index, size).hashes)


class KafkaLedger:
    """ledger.checkpoints and ledger.entries, from offset 0. The topics hold
    every checkpoint and entry the sequencer committed, published after the
    commit; they serve no proofs, so a replay from Kafka recomputes what a
    served proof would show."""

    serves_proofs = False

    def __init__(self, bootstrap: str, entries_topic: str, checkpoints_topic: str) -> None:
        self.name = f"{entries_topic} and {checkpoints_topic} on {bootstrap} (Kafka)"
        self.bootstrap = bootstrap
        self.entries_topic = entries_topic
        self.checkpoints_topic = checkpoints_topic

    def _records(self, topic: str) -> Iterator[list[bytes]]:
        """Every record value of a one-partition topic, to its end as of now."""
        from medledger.runtime.consumer import PositionedConsumer

        loop = asyncio.new_event_loop()
        consumer = PositionedConsumer(self.bootstrap, [topic], max_partition_fetch_bytes=8 * 1024 * 1024)
        try:
            loop.run_until_complete(consumer.start())
            ends = loop.run_until_complete(consumer.end_offsets())
            while loop.run_until_complete(consumer.behind(ends)):
                deliveries = loop.run_until_complete(consumer.fetch(timeout_ms=500, max_records=5000))
                if deliveries:
                    yield [d.value or b"" for d in deliveries]
        finally:
            loop.run_until_complete(consumer.stop())
            loop.close()

    def checkpoints(self) -> list[ListedCheckpoint]:
        found = []
        for values in self._records(self.checkpoints_topic):
            for value in values:
                cp = ledger_pb2.Checkpoint.FromString(value)
                found.append(ListedCheckpoint(cp.tree_size, cp.checkpoint, cp.chain_hash))
        return found

    def pages(self, start: int, end: int) -> Iterator[Sequence[EntryLike]]:
        for values in self._records(self.entries_topic):
            entries = [events_pb2.LedgerEntry.FromString(v) for v in values]
            entries = [e for e in entries if start <= e.index < end]
            if entries:
                yield entries
            if entries and entries[-1].index >= end - 1:
                return

    def consistency_proof(self, first: int, second: int) -> list[bytes] | None:
        return None

    def inclusion_proof(self, index: int, size: int) -> list[bytes] | None:
        return None
