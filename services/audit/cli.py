"""`medledger audit ...`: verify a running ledger from outside, trusting only
the verifier key the auditor was given (or, if none, the one the ledger serves)."""

from __future__ import annotations

import time
from typing import Annotated

import grpc
import typer

from medledger.audit.verify import AuditFailure, LogAuditor
from medledger.ledger import note
from medledger.runtime.transport import GrpcTls
from medledger.v1 import ledger_pb2, ledger_pb2_grpc

app = typer.Typer(help="Audit tooling: replay and verify the ledger.", no_args_is_help=True)
PAGE = 100_000


@app.command()
def verify(
    ledger: Annotated[str, typer.Option(help="LedgerService address")] = "127.0.0.1:50054",
    verifier_key: Annotated[str, typer.Option(help="trusted note verifier key; default: ask the ledger")] = "",
    token: Annotated[str, typer.Option(envvar="MEDLEDGER_TOKEN", help="auditor bearer token for entries")] = "",
) -> None:
    """Replay every entry up to the latest checkpoint: leaf hashes, hash chain,
    RFC 6962 root and the checkpoint signature must all agree."""
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with GrpcTls.from_env().channel(ledger) as channel:
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        served = stub.GetVerifierKey(ledger_pb2.GetVerifierKeyRequest())
        trusted = verifier_key or served.verifier_key
        checkpoint = stub.GetCheckpoint(ledger_pb2.GetCheckpointRequest())
        auditor = LogAuditor(note.NoteVerifier.from_verifier_key(trusted), origin=served.origin)
        started = time.perf_counter()
        try:
            while auditor.tree.size < checkpoint.tree_size:
                count = min(PAGE, checkpoint.tree_size - auditor.tree.size)
                request = ledger_pb2.GetEntriesRequest(start=auditor.tree.size, count=count)
                for page in stub.GetEntryPages(request, metadata=metadata):
                    for e in page.entries:
                        auditor.add(e.index, e.event, e.leaf_hash, e.chain_hash)
            cp = auditor.check(checkpoint.checkpoint)
        except AuditFailure as failure:
            typer.echo(f"FAILED: {failure}", err=True)
            raise typer.Exit(1) from None
        elapsed = time.perf_counter() - started
    rate = cp.size / elapsed if elapsed else 0.0
    typer.echo(f"OK: {cp.size} entries verified against the checkpoint signed by {trusted.split('+')[0]}")
    typer.echo(f"root {cp.root.hex()}  ({elapsed:.2f}s, {rate:,.0f} entries/s)")
