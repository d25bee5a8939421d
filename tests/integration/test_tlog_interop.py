"""Tools nobody here wrote audit MedLedger through C2SP tlog-tiles: Tessera's
fsck re-derives every tile and the signed root from the entry bundles, and
proofs built by Tessera's client package from tiles verify (and are the ones
the gRPC API serves). fsck must also fail once a stored hash is tampered with.
Go builds the tools (tests/interop/tessera.py); without Go these tests skip."""

from __future__ import annotations

import json
import subprocess
from hashlib import sha256
from pathlib import Path
from typing import Callable

import asyncpg

from medledger.runtime.settings import Topics
from medledger.testing.identity import IdentityHarness
from medledger.testing.ledger import audit, produce, sample_events, stub, tamper_stored_hash, wait_for_checkpoint
from medledger.testing.stack import ServiceProcess
from medledger.v1 import ledger_pb2
from tests.interop.tessera import TesseraTools, build_tools

FIRST, SIZE = 1000, 3000
PROVEN = (0, 255, 256, 999, 1000, 2047, 2999)


def fsck(tools: TesseraTools, ledger: ServiceProcess, key_file: Path, origin: str, token: str) -> str:
    """fsck's output. fsck reports the outcome in its log, not in its exit
    status: 'Successfully fsck'd log with size N', or 'fsck failed'."""
    done = subprocess.run(
        [str(tools.fsck), f"--storage_url={ledger.tiles_url}/", f"--public_key={key_file}", f"--origin={origin}",
         f"--bearer_token={token}", "--ui=false", "--N=4", "--v=1"],
        capture_output=True, text=True, timeout=300,
    )
    return done.stdout + done.stderr


def passed(output: str, size: int = SIZE) -> bool:
    return f"Successfully fsck'd log with size {size}" in output and "fsck failed" not in output


async def test_tessera_fsck_and_client_proofs_verify_a_live_ledger(
    spawn: Callable[..., ServiceProcess], topics: Topics, isolated_identity: IdentityHarness,
    service_env: dict[str, str], tmp_path: Path,
) -> None:
    tools = build_tools()
    auditor = isolated_identity.auditor()
    ledger_proc = spawn("ledger").wait_serving()
    events = sample_events(SIZE, topics)
    await produce(events[:FIRST])
    channel, ledger = stub(ledger_proc.address)
    with channel:
        first = wait_for_checkpoint(ledger, FIRST)
        await produce(events[FIRST:])
        latest = wait_for_checkpoint(ledger, SIZE)
        assert latest.tree_size == SIZE  # nothing else is produced: the log stays at SIZE
        entries = audit(ledger, latest, auditor.metadata)
        key = ledger.GetVerifierKey(ledger_pb2.GetVerifierKeyRequest())
        grpc_inclusion = {
            i: list(ledger.GetInclusionProof(ledger_pb2.GetInclusionProofRequest(index=i, tree_size=SIZE)).hashes)
            for i in PROVEN
        }
        grpc_consistency = list(ledger.GetConsistencyProof(
            ledger_pb2.GetConsistencyProofRequest(first_size=first.tree_size, second_size=SIZE)
        ).hashes)
    key_file = tmp_path / "ledger.pub"
    key_file.write_text(key.verifier_key + "\n")

    output = fsck(tools, ledger_proc, key_file, key.origin, auditor.token)
    assert passed(output), output

    client = subprocess.run(
        [str(tools.tlogclient), f"--storage_url={ledger_proc.tiles_url}/", f"--public_key={key_file}",
         f"--origin={key.origin}", f"--bearer_token={auditor.token}", f"--indices={','.join(map(str, PROVEN))}",
         f"--old_size={first.tree_size}", f"--old_root={first.root_hash.hex()}"],
        capture_output=True, text=True, timeout=120,
    )
    assert client.returncode == 0, client.stderr
    report = json.loads(client.stdout)
    assert (report["size"], bytes.fromhex(report["root"])) == (SIZE, latest.root_hash)
    for proven in report["inclusion"]:
        index = proven["index"]
        assert bytes.fromhex(proven["leaf_hash"]) == entries[index].leaf_hash
        assert [bytes.fromhex(h) for h in proven["proof"]] == grpc_inclusion[index]
    assert [p["index"] for p in report["inclusion"]] == list(PROVEN)
    assert [bytes.fromhex(h) for h in report["consistency"]] == grpc_consistency

    # A tampered stored hash: fsck re-derives it from the entries and fails.
    conn = await asyncpg.connect(service_env["MEDLEDGER_LEDGER_DATABASE_URL"])
    try:
        forged = sha256(b"forged").digest()
        for level, index in ((8, 3), (0, 700)):  # a hash in a level-1 tile; one in a level-0 tile
            original = await tamper_stored_hash(conn, level, index, forged)
            tampered = fsck(tools, ledger_proc, key_file, key.origin, auditor.token)
            await tamper_stored_hash(conn, level, index, original)
            assert "fsck failed" in tampered and not passed(tampered), f"fsck passed with ({level}, {index}) tampered:\n{tampered}"
    finally:
        await conn.close()
    assert passed(fsck(tools, ledger_proc, key_file, key.origin, auditor.token))  # restored, it checks out again
