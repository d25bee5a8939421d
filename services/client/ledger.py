"""The ledger's public reads, as a client that keeps the ledger honest.

Checkpoints, the verifier key and proofs hold only hashes and need no token.
A client that remembers the last checkpoint it verified asks for each newer
one to be proved consistent with it (``advance``), so the ledger cannot show
it one history today and another tomorrow.

The verifier key the ledger serves is for bootstrapping a pin out of band
(compare it with the operator's published key): trusting it from the same
connection proves nothing.
"""

from __future__ import annotations

from medledger.client.proofs import ProofInvalid, TrustAnchors
from medledger.client.rpc import DEFAULT_TIMEOUT_S, call
from medledger.ledger import merkle, note
from medledger.v1 import ledger_pb2, ledger_pb2_grpc


class LedgerClient:
    """The ledger service's hash-only reads."""

    def __init__(self, stub: ledger_pb2_grpc.LedgerServiceStub) -> None:
        self._stub = stub

    def served_verifier_key(self) -> ledger_pb2.VerifierKey:
        """The verifier key and origin the ledger says it uses: compare with
        the pinned ones, never pin them from here alone."""
        return call("ledger GetVerifierKey", lambda: self._stub.GetVerifierKey(ledger_pb2.GetVerifierKeyRequest(), timeout=DEFAULT_TIMEOUT_S))

    def checkpoint(self, anchors: TrustAnchors) -> note.Checkpoint:
        """The latest signed checkpoint, its signature checked against the pin."""
        reply = call("ledger GetCheckpoint", lambda: self._stub.GetCheckpoint(ledger_pb2.GetCheckpointRequest(), timeout=DEFAULT_TIMEOUT_S))
        return _opened(reply.checkpoint, anchors)

    def advance(self, trusted: note.Checkpoint, newer: note.Checkpoint) -> note.Checkpoint:
        """``newer`` once the ledger proved it extends ``trusted`` (RFC 9162
        consistency); ProofInvalid if it does not (a forked or rewritten log)."""
        if newer.size < trusted.size:
            raise ProofInvalid(f"checkpoint of size {newer.size} is older than the trusted size {trusted.size}")
        if trusted.size == 0 or newer.size == trusted.size:
            if newer.size == trusted.size and newer.root != trusted.root:
                raise ProofInvalid(f"two checkpoints of size {newer.size} with different roots: the log forked")
            return newer
        request = ledger_pb2.GetConsistencyProofRequest(first_size=trusted.size, second_size=newer.size)
        proof = call("ledger GetConsistencyProof", lambda: self._stub.GetConsistencyProof(request, timeout=DEFAULT_TIMEOUT_S))
        try:
            merkle.verify_consistency(trusted.size, newer.size, list(proof.hashes), trusted.root, newer.root)
        except merkle.ProofError as exc:
            raise ProofInvalid(f"checkpoint {newer.size} is not consistent with trusted checkpoint {trusted.size}: {exc}") from None
        return newer


def _opened(signed_note: bytes, anchors: TrustAnchors) -> note.Checkpoint:
    try:
        return note.open_checkpoint(signed_note, anchors.ledger, origin=anchors.origin)
    except note.NoteError as exc:
        raise ProofInvalid(f"checkpoint is not signed by the pinned ledger key: {exc}") from None
