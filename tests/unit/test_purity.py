"""The pure cores stay pure: importing one, in a fresh interpreter, loads no
gRPC, no PostgreSQL driver and no Kafka client. I/O belongs in the adapters
(api, store, app, ...), which hand the cores what they need."""

from __future__ import annotations

import subprocess
import sys

import pytest

CORE_MODULES = [
    "medledger.identity.domain",
    "medledger.identity.vault",
    "medledger.consent.domain",
    "medledger.consent.decisions",
    "medledger.consent.validation",
    "medledger.consent.signing",
    "medledger.ledger.merkle",
    "medledger.ledger.note",
    "medledger.ledger.intake",
    "medledger.ledger.proofs",
    "medledger.ledger.tlog_tiles",
    "medledger.ledger.tile_tree",
    "medledger.records.disclosure_index",
    "medledger.audit.verify",
    "medledger.audit.checks",
    "medledger.audit.envelopes",
    "medledger.audit.signers",
    "medledger.audit.state",
    "medledger.audit.prove",
    "medledger.audit.disclosures",
    "medledger.audit.compare",
    "medledger.audit.records_rows",
    "medledger.audit.pipeline",
    "medledger.runtime.errors",
    "medledger.runtime.request_guard",
    "medledger.runtime.envelope",
    "medledger.runtime.times",
    "medledger.monitor.rules",
    "medledger.monitor.observations",
    "medledger.monitor.hours",
    "medledger.monitor.frames",
    "medledger.monitor.alerts",
    "medledger.runtime.revocations",
    "medledger.runtime.rate_limit",
    "medledger.runtime.sealing",
    "medledger.runtime.signed",
    "medledger.records.domain",
    "medledger.records.resource",
    "medledger.records.crypto",
    "medledger.client.proofs",
    "medledger.client.attestation",
]
IO_PACKAGES = ("grpc", "asyncpg", "aiokafka")

_PROBE = """
import importlib, sys
importlib.import_module(sys.argv[1])
io = sys.argv[2].split(",")
print(",".join(sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in io})))
"""


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_no_io_library(module: str) -> None:
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, module, ",".join(IO_PACKAGES)],
        capture_output=True, text=True, timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    loaded = probe.stdout.strip()
    assert not loaded, f"importing {module} loads {loaded}: move that I/O into an adapter"
