"""The access monitor's metrics (runtime/metrics.py has the shared ones and the
/metrics endpoint). Labels come from fixed sets: rule names and outcomes, never
an identity or event id.

``medledger_monitor_alerts_total{rule}`` counts alerts this process published;
after a crash a replayed alert (the same event, skipped by the ledger) may be
counted again, so the ledger (``medledger audit alerts``) is the record and
this is the signal to page on.
"""

from __future__ import annotations

from typing import Iterable

from prometheus_client import Counter

ALERTS = Counter("medledger_monitor_alerts", "Access alerts published on access.alerts, by rule.", ["rule"])
EVENTS = Counter(
    "medledger_monitor_events",
    "Events the counter read from the repartition topic: counted by a rule, refused "
    "because no allowed producer signed them, or dropped because their occurred_at is "
    "further ahead of the time they were received than MEDLEDGER_MONITOR_MAX_CLOCK_SKEW_S.",
    ["outcome"],
)
COUNTED, UNAUTHENTICATED = EVENTS.labels("counted"), EVENTS.labels("unauthenticated")
FROM_THE_FUTURE = EVENTS.labels("future")
REJOINS = Counter(
    "medledger_monitor_stall_rebalances",
    "Rebalances this replica asked for because a partition it owns had events waiting and no "
    "committed progress for 20 s (monitor/stall.py, process.STALL_S); each is logged.",
)


def declare(rules: Iterable[str]) -> None:
    """Create each rule's series at zero, so increase() sees the first alert."""
    for rule in rules:
        ALERTS.labels(rule)
