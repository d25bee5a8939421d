"""`medledger audit alerts` (services/audit/alerts.py): the alerts among the
ledger's entries, each checked; a forged or altered alert entry is reported."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone

from medledger.audit.alerts import scan
from medledger.monitor.alerts import alert_envelope
from medledger.monitor.rules import Counted, Firing
from medledger.runtime.envelope import EventSigner
from medledger.testing import monitor as m
from medledger.testing.stack import PRODUCERS
from medledger.runtime.settings import Topics
from medledger.audit.envelopes import pinned_verifier
from medledger.runtime.envelope import parse_producer_keys


@dataclass(frozen=True)
class Entry:
    index: int
    event: bytes
    leaf_hash: bytes
    chain_hash: bytes = b""


def entry(index: int, event: bytes, leaf_hash: bytes | None = None) -> Entry:
    return Entry(index, event, leaf_hash or hashlib.sha256(b"\x00" + event).digest())


def firing(rule: str, subject: str, end: int) -> Firing:
    return Firing(rule, subject, end - 3600, end, 2, tuple(Counted(f"p{i}", f"e{i}", f"p{i}") for i in range(3)))


VERIFIER = pinned_verifier(parse_producer_keys(PRODUCERS.keys_text))
MONITOR = PRODUCERS.signers["monitor"]


def test_lists_alerts_with_their_index_and_filters_by_time_and_rule() -> None:
    breadth = MONITOR.seal(alert_envelope(firing("breadth", "dr-a", 1_800_000_000)))
    probing = MONITOR.seal(alert_envelope(firing("probing", "req-b", 1_900_000_000)))
    other = m.decision(Topics(), "req", "pat")[1].SerializeToString()  # not an alert: skipped
    pages = [[entry(0, other), entry(1, breadth)], [entry(2, probing), entry(3, b"\xffnot an envelope")]]
    found = scan(pages, VERIFIER, None, "")
    assert [(line.index, line.rule, line.subject_id, line.count) for line in found.lines] == [
        (1, "breadth", "dr-a", 3), (2, "probing", "req-b", 3),
    ]
    assert found.bad == []
    assert found.lines[0].as_dict()["triggering_event_ids"] == ["e0", "e1", "e2"]
    since = datetime.fromtimestamp(1_850_000_000, timezone.utc)
    assert [line.index for line in scan(pages, VERIFIER, since, "").lines] == [2]
    assert [line.index for line in scan(pages, VERIFIER, None, "breadth").lines] == [1]


def test_an_alert_entry_that_does_not_verify_is_reported_not_listed() -> None:
    genuine = alert_envelope(firing("breadth", "dr-a", 1_800_000_000))
    forged = EventSigner.generate("monitor").seal(alert_envelope(firing("breadth", "dr-x", 1_800_000_000)))
    by_consent = PRODUCERS.signers["consent"].seal(alert_envelope(firing("probing", "dr-y", 1_800_000_000)))
    sealed = MONITOR.seal(genuine)
    pages = [[entry(0, forged), entry(1, by_consent), entry(2, sealed, leaf_hash=b"\x00" * 32), entry(3, sealed)]]
    found = scan(pages, VERIFIER, None, "")
    assert [line.index for line in found.lines] == [3]
    assert [index for index, _ in found.bad] == [0, 1, 2]
