"""Kafka or PostgreSQL going away: services keep running, say NOT_SERVING,
and recover by themselves when the dependency returns. These tests stop the
shared broker and database, so they run last (marker 'disruptive')."""

from __future__ import annotations

import subprocess
from typing import Callable

import pytest

from medledger.runtime.settings import Topics
from medledger.testing.ledger import audit, produce, sample_events, stub, wait_for_checkpoint
from medledger.testing.stack import ROOT, ServiceProcess, all_serving, health_status, wait_until

pytestmark = pytest.mark.disruptive


def _run(*args: str) -> None:
    subprocess.run(["bash", *args], check=True, cwd=ROOT, capture_output=True)


@pytest.mark.parametrize(
    "script",
    [str(ROOT / "deploy" / "kafka" / "kafka.sh"), str(ROOT / "deploy" / "postgres" / "pg.sh")],
    ids=["kafka", "postgresql"],
)
async def test_services_report_not_serving_and_recover(
    script: str, spawn: Callable[..., ServiceProcess], topics: Topics, auditor_metadata: tuple[tuple[str, str], ...]
) -> None:
    ledger, records = spawn("ledger"), spawn("records")
    all_serving(ledger, records)
    events = sample_events(60, topics)
    await produce(events[:30])
    channel, ledger_stub = stub(ledger.address)
    with channel:
        wait_for_checkpoint(ledger_stub, 30)
        _run(script, "stop")
        try:
            for proc in (ledger, records):
                wait_until(lambda: health_status(proc.address) == "NOT_SERVING", 30, 0.2, f"{proc.name} NOT_SERVING")
                assert proc.proc is not None and proc.proc.poll() is None, f"{proc.name} must keep running"
        finally:
            _run(script, "start")
        for proc in (ledger, records):
            wait_until(lambda: health_status(proc.address) == "SERVING", 90, 0.5, f"{proc.name} SERVING again")
        await produce(events[30:])
        cp = wait_for_checkpoint(ledger_stub, 60, timeout=120)
        entries = audit(ledger_stub, cp, auditor_metadata)
    assert sorted(e.event_id for e in entries) == sorted(e.event_id for _, e in events)
