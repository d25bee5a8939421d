"""The consent service's PostgreSQL adapter: break-glass justifications, the
durable copy of every consent (folded from consent.events with tracking rows),
and the lock that elects the one replica doing housekeeping. consent.events
is the source of truth; decisions never read this database."""

from __future__ import annotations

from datetime import timezone
from typing import Sequence, TypeAlias

import asyncpg

from medledger.consent.domain import PURPOSE_CODES, BreakGlassRecord
from medledger.consent.projection import CONSENT_EVENTS, MalformedEvent, unpack
from medledger.v1 import consent_pb2 as pb
from medledger.v1 import events_pb2

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"

HOUSEKEEPING_LOCK = 0x636F6E73  # "cons"


async def insert_break_glass(conn: Conn, record: BreakGlassRecord, justification: str) -> None:
    await conn.execute(
        "INSERT INTO break_glass (break_glass_id, patient_id, practitioner_id, organization_id, justification,"
        " justification_sha256, invoked_at, valid_until, event_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        record.break_glass_id, record.patient_id, record.practitioner_id, record.organization_id, justification,
        record.justification_sha256, record.invoked_at, record.valid_until, record.event_id,
    )


async def justifications(conn: Conn, patient_id: str) -> dict[str, str]:
    """break-glass id -> justification, for one patient."""
    rows = await conn.fetch("SELECT break_glass_id, justification FROM break_glass WHERE patient_id = $1", patient_id)
    return {r["break_glass_id"]: r["justification"] for r in rows}


async def try_lead(conn: Conn) -> bool:
    """Take the housekeeping lock on this connection if free. It is held as
    long as the connection lives, so a dead leader's lock frees itself."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", HOUSEKEEPING_LOCK))


# ---- the durable copy of consents -------------------------------------------------

# (partition, offset, envelope) of one consent.events record
Record: TypeAlias = tuple[int, int, events_pb2.EventEnvelope]

_GRANT = (
    "INSERT INTO consents (consent_id, patient_id, grantee_id, grantee_kind, purposes, all_records, categories,"
    " record_ids, valid_from, valid_until, signer_id, signer_role, terms, signature, granted_event_id, granted_at)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) ON CONFLICT DO NOTHING"
)
_REVOKE = "UPDATE consents SET revoked_at = $2, revoked_by = $3 WHERE consent_id = $1 AND revoked_at IS NULL"
_EXPIRE = "UPDATE consents SET expired_at = $2 WHERE consent_id = $1 AND expired_at IS NULL"


async def mirrored_positions(conn: Conn, topic: str) -> dict[int, int]:
    """partition -> the next offset to fold in (0 for partitions never read)."""
    rows = await conn.fetch(
        'SELECT partition, max("offset") + 1 AS next FROM applied_events WHERE topic = $1 GROUP BY partition', topic
    )
    return {r["partition"]: r["next"] for r in rows}


def _grant_row(env: events_pb2.EventEnvelope, event: pb.ConsentGranted) -> tuple[object, ...]:
    t = event.terms
    return (
        t.consent_id, t.patient_id, t.grantee_id, pb.GranteeKind.Name(event.grantee_kind),
        [PURPOSE_CODES.get(p, str(p)) for p in t.purposes], t.scope.all_records, list(t.scope.categories),
        list(t.scope.record_ids), t.valid_from.ToDatetime(tzinfo=timezone.utc),
        t.valid_until.ToDatetime(tzinfo=timezone.utc), t.signer_id, pb.SignerRole.Name(event.signer_role),
        t.SerializeToString(deterministic=True), event.signature, env.event_id,
        env.occurred_at.ToDatetime(tzinfo=timezone.utc),
    )


async def mirror(conn: Conn, topic: str, records: Sequence[Record]) -> int:
    """Fold a batch of consent.events records in, each exactly once: the
    tracking rows and the changes commit together. Returns how many were new."""
    async with conn.transaction():
        rows = await conn.fetch(
            'INSERT INTO applied_events (event_id, topic, partition, "offset")'
            " SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[]) ON CONFLICT DO NOTHING RETURNING event_id",
            [e.event_id for _, _, e in records], [topic] * len(records), [p for p, _, _ in records],
            [o for _, o, _ in records],
        )
        new = {r["event_id"] for r in rows}
        grants, revokes, expiries = [], [], []
        for _, _, env in records:
            try:
                event = unpack(env, CONSENT_EVENTS) if env.event_id in new else None
            except MalformedEvent:
                continue
            at = env.occurred_at.ToDatetime(tzinfo=timezone.utc)
            if isinstance(event, pb.ConsentGranted):
                grants.append(_grant_row(env, event))
            elif isinstance(event, pb.ConsentRevoked):
                revokes.append((event.consent_id, at, event.revoked_by))
            elif isinstance(event, pb.ConsentExpired):
                expiries.append((event.consent_id, at))
        for sql, args in ((_GRANT, grants), (_REVOKE, revokes), (_EXPIRE, expiries)):
            if args:
                await conn.executemany(sql, args)
        return len(new)
