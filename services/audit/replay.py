"""``medledger audit replay``: rebuild every projection from the event topics
alone and compare it with the live databases.

Every event topic is read from offset 0 with the PositionedConsumer, and only
envelopes that pass the pinned producer keys are applied, with the services'
own projection code:

- identity: ``identity/relay.apply_from_topic`` into a scratch database
  migrated with identity's migrations; compared with the live identities,
  identity_keys and memberships tables;
- consent: ``consent/store.mirror`` into a scratch consent database
  (compared with the live consents table) and the decision projection
  (``consent/projection.Projection``), whose break-glass records are compared
  with the live break_glass table, including that each justification stored
  in plain text still hashes to the SHA-256 on its event (sealed ones are the
  consent service's to open).
- records: its projection of identity.events and consent.events
  (``records/projection.apply_batch``) and its disclosure index of
  access.events and consent.events (``records/disclosures.apply_batch``) into
  a scratch records database, compared table by table with the live one; and
  the metadata records.events state (records, versions, research
  registrations, erasures: ``audit/records_rows.py``) against the live rows.
  Sealed payloads, wrapped keys and learned ledger indices are on no event
  and are not compared.

Live databases are only read (read-only transactions). Scratch databases are
created on ``scratch_server`` and dropped afterwards unless kept. Before
comparing, the live services are given ``settle_s`` to publish their outboxes
and fold in what was replayed, so events in flight are not reported as
divergences; what still differs then is reported row by row and column by
column.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import asyncpg

import medledger.consent as consent_package
import medledger.identity as identity_package
import medledger.records as records_package
from medledger.audit.compare import Divergence, diff_rows
from medledger.audit.pipeline import NoProgress, Progress
from medledger.audit.records_rows import ARTIFACT_COLUMNS, ERASURE_COLUMNS, RECORD_COLUMNS, VERSION_COLUMNS, RecordsRows
from medledger.consent import store as consent_store
from medledger.consent.projection import Projection
from medledger.identity.relay import apply_from_topic
from medledger.records import disclosures as records_disclosures
from medledger.records import projection as records_projection
from medledger.records.disclosure_index import index_row
from medledger.runtime.consumer import Opened, PositionedConsumer
from medledger.runtime.envelope import EnvelopeVerifier
from medledger.runtime.postgres import connect, database_name, drop_database, prepare_database, with_database
from medledger.runtime.settings import Topics

IDENTITY_MIGRATIONS = Path(identity_package.__file__).parent / "migrations"
CONSENT_MIGRATIONS = Path(consent_package.__file__).parent / "migrations"
RECORDS_MIGRATIONS = Path(records_package.__file__).parent / "migrations"
MIGRATIONS = {"identity": IDENTITY_MIGRATIONS, "consent": CONSENT_MIGRATIONS, "records": RECORDS_MIGRATIONS}

IDENTITY_TABLES = {
    "identities": ("identity_id",),
    "identity_keys": ("key_id",),
    "memberships": ("membership_id",),
}
# records' projection of identity and consent events, table -> key
RECORDS_PROJECTION_TABLES = {
    "identities": ("identity_id",),
    "memberships": ("membership_id",),
    "consents": ("consent_id",),
    "break_glass": ("break_glass_id",),
    "representatives": ("patient_id", "representative_id"),
    "signing_keys": ("identity_id", "key_id"),
}
DISCLOSURE_INDEX_SQL = ("SELECT event_id, patient_id, event_type, occurred_at, break_glass_id, envelope"
                        " FROM disclosure_index")
BREAK_GLASS_COLUMNS = (
    "patient_id", "practitioner_id", "organization_id", "justification_sha256", "invoked_at", "valid_until", "event_id",
)


@dataclass(frozen=True)
class ReplayOptions:
    bootstrap: str
    topics: Topics
    verifier: EnvelopeVerifier
    identity_url: str | None = None
    consent_url: str | None = None
    scratch_server: str | None = None
    keep_scratch: bool = False
    settle_s: float = 10.0
    records_url: str | None = None


@dataclass
class ReplayOutcome:
    divergences: list[Divergence] = field(default_factory=list)
    events: dict[str, int] = field(default_factory=dict)  # verified envelopes per topic
    unauthenticated: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    scratch: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.events.values())

    @property
    def rate(self) -> float:
        return self.total / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": not self.divergences, "events": self.events, "unauthenticated": self.unauthenticated,
            "seconds": round(self.seconds, 3), "events_per_second": round(self.rate),
            "divergences": [d.as_dict() for d in self.divergences], "notes": self.notes, "scratch": self.scratch,
        }


class Rebuild:
    """The projections being rebuilt from the events."""

    def __init__(self, topics: Topics, identity: asyncpg.Connection | None, consent: asyncpg.Connection | None,
                 records: asyncpg.Connection | None = None) -> None:
        self.topics = topics
        self.identity = identity
        self.consent = consent
        self.records = records
        self.projection = Projection()
        self.patients: set[str] = set()
        self.records_rows = RecordsRows()

    async def apply(self, opened: Sequence[Opened]) -> None:
        identity = [o for o in opened if o.delivery.topic == self.topics.identity_events]
        consent = [o for o in opened if o.delivery.topic == self.topics.consent_events]
        if identity and self.identity is not None:
            async with self.identity.transaction():
                for o in identity:
                    await apply_from_topic(self.identity, o)
        if consent and self.consent is not None:
            await consent_store.mirror(self.consent, self.topics.consent_events, [
                (o.delivery.partition, o.delivery.offset, o.envelope) for o in consent
            ])
        for o in identity + consent:
            self.projection.apply(o.envelope)
        self.patients.update(o.envelope.aggregate_id for o in consent)
        self.records_rows.apply(o.envelope for o in opened if o.delivery.topic == self.topics.records_events)
        if self.records is not None:
            access = [o for o in opened if o.delivery.topic == self.topics.access_events]
            rows = [row for o in access + consent if (row := index_row(o.envelope, o.delivery.value or b"")) is not None]
            async with self.records.transaction():
                await records_projection.apply_batch(self.records, identity + consent, {})
                await records_disclosures.apply_batch(self.records, rows, (), {})


async def replay(options: ReplayOptions, progress: Progress | None = None) -> ReplayOutcome:
    progress = progress or NoProgress()
    outcome = ReplayOutcome()
    server = options.scratch_server or options.identity_url or options.consent_url or options.records_url
    tag = uuid.uuid4().hex[:10]
    scratch: dict[str, str] = {}
    if server is not None:  # a scratch server alone: rebuild (and keep) without comparing
        scratch["identity"] = with_database(server, f"audit_replay_identity_{tag}")
        scratch["consent"] = with_database(server, f"audit_replay_consent_{tag}")
        scratch["records"] = with_database(server, f"audit_replay_records_{tag}")
    connections: dict[str, asyncpg.Connection] = {}
    try:
        for name, url in scratch.items():
            await prepare_database(url, MIGRATIONS[name])
            connections[name] = await connect(url)
        rebuild = Rebuild(options.topics, connections.get("identity"), connections.get("consent"),
                          connections.get("records"))
        started = time.perf_counter()
        async with PositionedConsumer(options.bootstrap, options.topics.event_topics) as consumer:
            await consumer.start()
            await _read_to_end(consumer, options, rebuild, outcome, progress)
            outcome.seconds = time.perf_counter() - started
            if options.identity_url or options.consent_url or options.records_url:
                await _settle(consumer, options, rebuild, outcome, progress)
                outcome.divergences = await _compare(options, rebuild, connections)
        progress.done()
    finally:
        for conn in connections.values():
            await conn.close()
        if options.keep_scratch:
            outcome.scratch = {name: database_name(url) for name, url in scratch.items()}
        else:
            for url in scratch.values():
                await drop_database(url)
    return outcome


async def _read_to_end(
    consumer: PositionedConsumer, options: ReplayOptions, rebuild: Rebuild, outcome: ReplayOutcome,
    progress: Progress,
) -> None:
    ends = await consumer.end_offsets()
    positions = await consumer.positions()
    remaining = sum(max(0, end - positions.get((tp.topic, tp.partition), 0)) for tp, end in ends.items())
    progress.stage("events", remaining)
    while await consumer.behind(ends):
        deliveries = await consumer.fetch(timeout_ms=500, max_records=5000)
        if not deliveries:
            continue
        opened = consumer.envelopes(deliveries, options.verifier)
        outcome.unauthenticated += len(deliveries) - len(opened)
        for o in opened:
            logical = o.delivery.topic[len(options.topics.prefix):]
            outcome.events[logical] = outcome.events.get(logical, 0) + 1
        await rebuild.apply(opened)
        progress.advance(len(deliveries))


async def _settle(
    consumer: PositionedConsumer, options: ReplayOptions, rebuild: Rebuild, outcome: ReplayOutcome,
    progress: Progress,
) -> None:
    """Until the live services have published everything they committed and
    folded in everything on the topics (or ``settle_s`` passes): events in
    flight are not divergences."""
    deadline = time.monotonic() + options.settle_s
    while True:
        pending = await _live_pending(options, consumer)
        await _read_to_end(consumer, options, rebuild, outcome, progress)
        if not pending:
            return
        if time.monotonic() >= deadline:
            outcome.notes.append(f"the live services had not settled after {options.settle_s:.0f} s: {pending}")
            return
        await asyncio.sleep(0.2)


async def _live_pending(options: ReplayOptions, consumer: PositionedConsumer) -> str:
    """What the live databases have not settled yet ('' when nothing)."""
    waiting = []
    live = (("identity", options.identity_url), ("consent", options.consent_url), ("records", options.records_url))
    for name, url in live:
        if not url:
            continue
        conn = await connect(url)
        try:
            for outbox in ("outbox", "disclosure_outbox") if name == "records" else ("outbox",):
                unpublished = await conn.fetchval(f"SELECT count(*) FROM {outbox} WHERE published_at IS NULL")
                if unpublished:
                    waiting.append(f"{name} has {unpublished} unpublished events in {outbox}")
            if name == "records":
                waiting += await records_behind(conn, options.topics, consumer)
            if name == "consent":
                mirrored = await consent_store.mirrored_positions(conn, options.topics.consent_events)
                ends = await consumer.end_offsets([options.topics.consent_events])
                behind = sum(max(0, end - mirrored.get(tp.partition, 0)) for tp, end in ends.items())
                if behind:
                    waiting.append(f"the consent mirror is {behind} events behind consent.events")
        finally:
            await conn.close()
    return "; ".join(waiting)


async def records_behind(conn: asyncpg.Connection, topics: Topics, consumer: PositionedConsumer) -> list[str]:
    """How far the live records projection and disclosure index are behind
    the topics they read (their stored next offsets against the ends)."""
    out = []
    for label, table, watched in (
        ("projection", "projection_offsets", (topics.identity_events, topics.consent_events)),
        ("disclosure index", "disclosure_index_positions", (topics.access_events, topics.consent_events)),
    ):
        stored = {(r["topic"], r["partition"]): r["next_offset"]
                  for r in await conn.fetch(f"SELECT topic, partition, next_offset FROM {table}")}
        ends = await consumer.end_offsets(list(watched))
        behind = sum(max(0, end - stored.get((tp.topic, tp.partition), 0)) for tp, end in ends.items())
        if behind:
            out.append(f"records' {label} is {behind} events behind")
    return out


async def _rows(conn: asyncpg.Connection, sql: str) -> list[asyncpg.Record]:
    async with conn.transaction(readonly=True):
        return list(await conn.fetch(sql))


async def _compare(
    options: ReplayOptions, rebuild: Rebuild, scratch: dict[str, asyncpg.Connection]
) -> list[Divergence]:
    out: list[Divergence] = []
    if options.identity_url and "identity" in scratch:
        live = await connect(options.identity_url)
        try:
            for table, key in IDENTITY_TABLES.items():
                sql = f"SELECT * FROM {table}"
                out += diff_rows("identity", table, key, await _rows(scratch["identity"], sql), await _rows(live, sql))
        finally:
            await live.close()
    if options.consent_url and "consent" in scratch:
        live = await connect(options.consent_url)
        try:
            sql = "SELECT * FROM consents"
            out += diff_rows("consent", "consents", ("consent_id",), await _rows(scratch["consent"], sql),
                             await _rows(live, sql))
            out += _break_glass(rebuild, await _rows(live, "SELECT * FROM break_glass"))
        finally:
            await live.close()
    if options.records_url and "records" in scratch:
        live = await connect(options.records_url)
        try:
            out += await _compare_records(rebuild, scratch["records"], live)
        finally:
            await live.close()
    return out


async def _compare_records(rebuild: Rebuild, scratch: asyncpg.Connection, live: asyncpg.Connection) -> list[Divergence]:
    """records' projection and disclosure index, rebuilt with its own code,
    and the metadata records.events state, against the live records database."""
    out: list[Divergence] = []
    for table, key in RECORDS_PROJECTION_TABLES.items():
        sql = f"SELECT * FROM {table}"
        out += diff_rows("records", table, key, await _rows(scratch, sql), await _rows(live, sql))
    out += diff_rows("records", "disclosure_index", ("event_id",), await _rows(scratch, DISCLOSURE_INDEX_SQL),
                     await _rows(live, DISCLOSURE_INDEX_SQL))
    stated = rebuild.records_rows
    columns = ", ".join(("record_id", "version", *VERSION_COLUMNS))
    out += diff_rows("records", "record_versions", ("record_id", "version"), list(stated.versions.values()),
                     await _rows(live, f"SELECT {columns} FROM record_versions"), VERSION_COLUMNS)
    out += diff_rows("records", "records", ("record_id",), list(stated.records.values()),
                     await _rows(live, "SELECT * FROM records"), RECORD_COLUMNS)
    out += diff_rows("records", "research_artifacts", ("artifact_id",), list(stated.artifacts.values()),
                     await _rows(live, "SELECT * FROM research_artifacts"), ARTIFACT_COLUMNS)
    out += diff_rows("records", "patient_keys", ("patient_id",), list(stated.erasures.values()),
                     await _rows(live, "SELECT * FROM patient_keys WHERE erased_at IS NOT NULL"), ERASURE_COLUMNS)
    return out


def _break_glass(rebuild: Rebuild, live: Sequence[asyncpg.Record]) -> list[Divergence]:
    """The decision projection's break-glass records against the live table,
    and each live justification against the hash its event carries."""
    rebuilt = []
    for patient_id in sorted(rebuild.patients):
        state = rebuild.projection.patient(patient_id)
        for record in state.break_glass.values() if state else ():
            rebuilt.append({"break_glass_id": record.break_glass_id, **{c: getattr(record, c) for c in BREAK_GLASS_COLUMNS}})
    out = diff_rows("consent", "break_glass", ("break_glass_id",), rebuilt, live, BREAK_GLASS_COLUMNS)
    for row in live:
        if not isinstance(row["justification"], str):
            continue  # sealed at rest under the consent service's key: not the auditor's to open
        stored = hashlib.sha256(row["justification"].strip().encode("utf-8")).digest()
        if stored != row["justification_sha256"]:
            out.append(Divergence("consent", "break_glass", row["break_glass_id"], "justification",
                                  rebuilt=f"text hashing to {bytes(row['justification_sha256']).hex()[:32]}",
                                  live=f"text hashing to {stored.hex()[:32]}"))
    return out
