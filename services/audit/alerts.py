"""`medledger audit alerts`: the access monitor's alerts, read from the ledger.

Every AccessAlert the monitor raised is an entry of the log (access.alerts is
sequenced like every event topic), so the list comes from the ledger, not from
the monitor: an alert cannot be withdrawn once sequenced. Each listed alert's
leaf hash is recomputed and its producer signature checked against the pinned
keys; one that fails is reported and makes the command exit FAILED. That the
entries belong to a consistent, signed log is `medledger audit verify`'s job.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Iterable, Sequence

from google.protobuf.message import DecodeError
from rich.console import Console
from rich.table import Table

from medledger.audit.checks import EntryLike
from medledger.audit.exits import Exit
from medledger.audit.sources import GrpcLedger
from medledger.monitor.alerts import RULE_NAMES
from medledger.runtime.envelope import EnvelopeVerifier, UnauthenticatedEvent
from medledger.runtime.errors import SettingsError
from medledger.v1 import events_pb2, monitor_pb2

ACCESS_ALERT = monitor_pb2.AccessAlert.DESCRIPTOR.full_name
ALERTS_TOPIC = "access.alerts"  # logical name: the ledger's entries are checked against the policy as such


@dataclass(frozen=True)
class AlertLine:
    """One alert as the auditor sees it, with its ledger index."""

    index: int
    event_id: str
    rule: str
    subject_id: str
    window_start: datetime
    window_end: datetime
    count: int
    threshold: int
    triggering_event_ids: tuple[str, ...]
    patient_ids: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        values = asdict(self)
        values.update(
            window_start=self.window_start.isoformat(), window_end=self.window_end.isoformat(),
            triggering_event_ids=list(self.triggering_event_ids), patient_ids=list(self.patient_ids),
        )
        return values


@dataclass
class AlertScan:
    lines: list[AlertLine]
    bad: list[tuple[int, str]]  # (ledger index, why) of alert entries that do not verify


def _line(index: int, env: events_pb2.EventEnvelope) -> AlertLine:
    alert = monitor_pb2.AccessAlert()
    env.payload.Unpack(alert)
    return AlertLine(
        index, env.event_id, RULE_NAMES.get(alert.rule, str(alert.rule)), alert.subject_id,
        alert.window_start.ToDatetime(timezone.utc), alert.window_end.ToDatetime(timezone.utc),
        alert.count, alert.threshold, tuple(alert.triggering_event_ids), tuple(alert.patient_ids),
    )


def scan(
    pages: Iterable[Sequence[EntryLike]], verifier: EnvelopeVerifier, since: datetime | None, rule: str
) -> AlertScan:
    """The alerts among the entries (window ending at or after ``since``, of
    ``rule`` if given), and the alert entries that fail their checks."""
    result = AlertScan([], [])
    for page in pages:
        for entry in page:
            try:
                env = events_pb2.EventEnvelope.FromString(entry.event)
            except DecodeError:
                continue  # not an envelope: `audit verify` reports it
            if env.event_type != ACCESS_ALERT:
                continue
            if hashlib.sha256(b"\x00" + entry.event).digest() != entry.leaf_hash:
                result.bad.append((entry.index, "leaf hash does not match the entry's bytes"))
                continue
            try:
                verifier.check(ALERTS_TOPIC, env)
                line = _line(entry.index, env)
            except (UnauthenticatedEvent, DecodeError) as exc:
                result.bad.append((entry.index, str(exc)))
                continue
            if (since is None or line.window_end >= since) and (not rule or line.rule == rule):
                result.lines.append(line)
    return result


def list_alerts(
    ledger: str, token: str, verifier: EnvelopeVerifier, since: datetime | None, rule: str, as_json: bool
) -> int:
    """Print the alerts on the ledger up to its latest signed checkpoint."""
    if rule and rule not in RULE_NAMES.values():
        raise SettingsError(f"--rule must be one of {', '.join(RULE_NAMES.values())}")
    source = GrpcLedger(ledger, token)
    try:
        size = source.latest().tree_size
        found = scan(source.pages(0, size), verifier, since, rule)
    finally:
        source.close()
    if as_json:
        for line in found.lines:
            sys.stdout.write(json.dumps(line.as_dict()) + "\n")
    else:
        _print_table(found.lines, size)
    err = Console(stderr=True, highlight=False)
    for index, why in found.bad:
        err.print(f"[bold red]FAILED[/bold red]: ledger entry {index} is an AccessAlert that does not verify: {why}")
    return int(Exit.FAILED if found.bad else Exit.OK)


def _print_table(lines: list[AlertLine], size: int) -> None:
    table = Table(title=f"Access alerts on the ledger (tree size {size}): {len(lines)}", title_justify="left")
    for column in ("index", "window end", "rule", "subject", "count", "window", "event id"):
        table.add_column(column)
    for line in lines:
        table.add_row(
            str(line.index), line.window_end.strftime("%Y-%m-%d %H:%M:%S"), line.rule, line.subject_id,
            f"{line.count} > {line.threshold}" if line.threshold else str(line.count),
            f"{line.window_start:%Y-%m-%d %H:%M}–{line.window_end:%H:%M}", line.event_id,
        )
    Console(highlight=False).print(table)
