"""ListDisclosures' adapters: the consumer that keeps the per-patient
disclosure index in the records database, and the read that serves it
(docs/architecture.md, Decisions: "Records: the disclosure index").

The records service publishes RecordsDisclosed but never sees the consent
service's decisions, so one more PositionedConsumer reads access.events
(RecordsDisclosed and AccessDecided), consent.events (break-glass and its
reviews) and ledger.entries (their ledger indices). It is separate from the
identity/consent projection so that commands' ``sync()`` never waits for
the busy access topic. Envelopes are verified like every consumer's; rows
are keyed by event id and the positions commit with them, so a restart or a
redelivery changes nothing. The rules are in ``disclosure_index.py``.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Callable, Sequence

import asyncpg
from google.protobuf.message import DecodeError

from medledger.records import store
from medledger.records.disclosure_index import (
    BREAK_GLASS_INVOKED, BREAK_GLASS_REVIEWED, PATIENT_EVENT_TYPES, IndexRow, index_row, may_list, page, window,
)
from medledger.runtime.auth import Caller
from medledger.runtime.consumer import GATHERED_FETCH, PositionedConsumer
from medledger.runtime.envelope import EnvelopeVerifier
from medledger.runtime.errors import PermissionDenied
from medledger.runtime.outbox import Conn
from medledger.runtime.positions import Delivery
from medledger.runtime.settings import Topics
from medledger.v1 import events_pb2, records_pb2 as pb

log = logging.getLogger(__name__)
_BREAK_GLASS_TYPES = frozenset({BREAK_GLASS_INVOKED, BREAK_GLASS_REVIEWED})


def ledger_indices(deliveries: Sequence[Delivery], topics: Topics) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(event id, ledger index) of the entries of indexed event types, and of
    records.events' own entries (record versions). Not verified: the ledger
    alone writes ledger.entries, and an index is a pointer anyone checks with
    an inclusion proof (as consent's)."""
    found: list[tuple[str, int]] = []
    versions: list[tuple[str, int]] = []
    for d in deliveries:
        try:
            entry = events_pb2.LedgerEntry.FromString(d.value or b"")
            if entry.source_topic == topics.records_events:
                versions.append((entry.event_id, entry.index))
            elif entry.source_topic == topics.access_events:
                found.append((entry.event_id, entry.index))
            elif entry.source_topic in ("", topics.consent_events):
                if events_pb2.EventEnvelope.FromString(entry.event).event_type in (
                        _BREAK_GLASS_TYPES if entry.source_topic else PATIENT_EVENT_TYPES):
                    found.append((entry.event_id, entry.index))
        except DecodeError:
            log.warning("skipping a ledger.entries record that does not parse", extra={"offset": d.offset})
    return found, versions


async def apply_batch(conn: Conn, rows: Sequence[IndexRow], indices: Sequence[tuple[str, int]],
                      positions: dict[tuple[str, int], int], versions: Sequence[tuple[str, int]] = ()) -> None:
    """Store rows, ledger indices (of disclosures and of record versions) and
    the next offsets in the caller's transaction."""
    await store.remember_ledger_indices(conn, versions)
    if rows:
        await conn.executemany(
            "INSERT INTO disclosure_index (event_id, patient_id, event_type, occurred_at, break_glass_id, envelope)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING",
            [(r.event_id, r.patient_id, r.event_type, r.occurred_at, r.break_glass_id, r.envelope) for r in rows],
        )
    if indices:
        await conn.executemany(
            "INSERT INTO disclosure_ledger_indices (event_id, ledger_index) VALUES ($1, $2)"
            " ON CONFLICT (event_id) DO NOTHING",
            list(indices),
        )
    await conn.executemany(
        "INSERT INTO disclosure_index_positions (topic, partition, next_offset) VALUES ($1, $2, $3)"
        " ON CONFLICT (topic, partition) DO UPDATE SET next_offset = $3",
        [(topic, partition, offset) for (topic, partition), offset in positions.items()],
    )


class DisclosureIndexer:
    """Runs the index's consumer (restarted by the caller on failure)."""

    def __init__(self, bootstrap: str, topics: Topics, verifier: EnvelopeVerifier,
                 pool: Callable[[], asyncpg.Pool]) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.verifier = verifier
        self.pool = pool

    async def run(self) -> None:
        watched = (self.topics.access_events, self.topics.consent_events, self.topics.ledger_entries)
        async with self.pool().acquire() as conn:
            rows = await conn.fetch("SELECT topic, partition, next_offset FROM disclosure_index_positions"
                                    " WHERE topic = ANY($1::text[])", list(watched))
        known = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
        consumer = PositionedConsumer(self.bootstrap, watched, reader="records disclosure index", **GATHERED_FETCH)
        await consumer.start(known)
        try:
            while True:
                deliveries = await consumer.fetch(timeout_ms=500, max_records=5000)
                positions = await consumer.positions()
                if not deliveries and positions == known:
                    continue
                entries = [d for d in deliveries if d.topic == self.topics.ledger_entries]
                events = [d for d in deliveries if d.topic != self.topics.ledger_entries]
                index_rows = [row for o in await consumer.opened(events, self.verifier)
                              if (row := index_row(o.envelope, o.delivery.value or b"")) is not None]
                indices, versions = ledger_indices(entries, self.topics)
                async with self.pool().acquire() as conn, conn.transaction():
                    await apply_batch(conn, index_rows, indices, positions, versions)
                known = positions
        finally:
            await consumer.stop()


_LIST = """
SELECT d.event_id, d.patient_id, d.event_type, d.occurred_at, d.break_glass_id, d.envelope, l.ledger_index,
       CASE WHEN d.event_type = $7 THEN (
           SELECT r.envelope FROM disclosure_index r
            WHERE r.event_type = $8 AND r.break_glass_id = d.break_glass_id AND r.patient_id = d.patient_id
            ORDER BY r.occurred_at LIMIT 1) END AS review
  FROM disclosure_index d LEFT JOIN disclosure_ledger_indices l ON l.event_id = d.event_id
 WHERE d.patient_id = $1
   AND ($2::timestamptz IS NULL OR d.occurred_at >= $2)
   AND ($3::timestamptz IS NULL OR d.occurred_at < $3)
   AND ($4::timestamptz IS NULL OR (d.occurred_at, d.event_id) > ($4, $5))
 ORDER BY d.occurred_at, d.event_id
 LIMIT $6
"""


class DisclosureReads:
    """ListDisclosures: who may list (``may_list``), then one indexed range read."""

    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        self.pool = pool

    async def list(self, caller: Caller, request: pb.ListDisclosuresRequest) -> pb.ListDisclosuresResponse:
        w = window(request)
        async with self.pool().acquire() as conn:
            patient = await store.party(conn, w.patient_id)
            known = patient is not None and patient.kind == "PATIENT"
            registrar = patient.registered_by if patient is not None else ""
            if not may_list(caller.subject, caller.kind, caller.audits({registrar} - {""}), w.patient_id, known,
                            await store.representatives(conn, w.patient_id)):
                raise PermissionDenied("only the patient, an active representative or an auditor of the patient's "
                                       "organization may list this patient's disclosures")
            after_at: datetime | None = w.after.created_at if w.after else None
            rows = await conn.fetch(_LIST, w.patient_id, w.since, w.until, after_at,
                                    w.after.record_id if w.after else "", w.size + 1,
                                    BREAK_GLASS_INVOKED, BREAK_GLASS_REVIEWED)
        return page([(IndexRow(r["event_id"], r["patient_id"], r["event_type"], r["occurred_at"], r["break_glass_id"],
                               bytes(r["envelope"])), r["ledger_index"],
                      bytes(r["review"]) if r["review"] is not None else None) for r in rows], w.size)
