"""AccessAlert events, built so that the same firing always gives the same bytes.
Pure.

The alert's event id is derived from (rule, subject, window) alone and its
occurred_at is the window's end; the payload lists what the window counted, in
window order; Ed25519 signatures are deterministic. So a monitor that fires
again after a restart or a rebalance publishes the identical record, which the
ledger skips as a duplicate (docs/architecture.md, Ledger contract, Rejects).
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timezone

from medledger.monitor.observations import BREADTH, BREAK_GLASS, PROBING, UNUSUAL_HOURS
from medledger.monitor.rules import Firing
from medledger.runtime.envelope import MONITOR, envelope
from medledger.v1 import events_pb2, monitor_pb2

RULES = {
    BREADTH: monitor_pb2.ALERT_RULE_BREADTH,
    PROBING: monitor_pb2.ALERT_RULE_PROBING,
    BREAK_GLASS: monitor_pb2.ALERT_RULE_BREAK_GLASS,
    UNUSUAL_HOURS: monitor_pb2.ALERT_RULE_UNUSUAL_HOURS,
}
RULE_NAMES = {number: name for name, number in RULES.items()}
_ID_PREFIX = b"medledger.v1.AccessAlert/id\n"


def alert_id(rule: str, subject: str, window_start_s: int, window_end_s: int) -> str:
    """A UUIDv8 (RFC 9562) laid out like a UUIDv7: the window end's Unix
    milliseconds, then 74 bits of SHA-256 over rule, subject and window."""
    digest = hashlib.sha256(_ID_PREFIX + f"{rule}\n{subject}\n{window_start_s}\n{window_end_s}".encode()).digest()
    value = (window_end_s * 1000) << 80 | int.from_bytes(digest[:10], "big")
    value = (value & ~(0xF << 76)) | (0x8 << 76)  # version 8
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 9562 variant
    return str(uuid.UUID(int=value))


def _utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def access_alert(firing: Firing) -> monitor_pb2.AccessAlert:
    alert = monitor_pb2.AccessAlert(
        rule=RULES[firing.rule],
        subject_id=firing.subject,
        count=len(firing.counted),
        threshold=firing.threshold,
        triggering_event_ids=[c.event_id for c in firing.counted],
        patient_ids=list(dict.fromkeys(c.patient_id for c in firing.counted if c.patient_id)),
    )
    alert.window_start.FromDatetime(_utc(firing.window_start_s))
    alert.window_end.FromDatetime(_utc(firing.window_end_s))
    return alert


def alert_envelope(firing: Firing) -> events_pb2.EventEnvelope:
    """The unsigned envelope (the monitor's EventSigner seals it): keyed by the
    subject, dated at the window's end, no actor (the monitor raised it)."""
    return envelope(
        access_alert(firing),
        aggregate_id=firing.subject,
        producer=MONITOR,
        event_id=alert_id(firing.rule, firing.subject, firing.window_start_s, firing.window_end_s),
        occurred_at=_utc(firing.window_end_s),
    )
