"""The consent service's PostgreSQL adapter: break-glass justifications and
review notes (sealed at rest), the per-practitioner break-glass count, the
durable copy of every consent (folded from consent.events with tracking rows),
and the lock that elects the one replica doing housekeeping. consent.events
is the source of truth; decisions never read this database."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterable, Sequence, TypeAlias

import asyncpg

from medledger.consent.domain import PURPOSE_CODES, BreakGlassRecord
from medledger.runtime.sealing import Labels, Sealed, Sealer
from medledger.consent.projection import CONSENT_EVENTS, MalformedEvent, unpack
from medledger.v1 import consent_pb2 as pb
from medledger.v1 import events_pb2

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"

HOUSEKEEPING_LOCK = 0x636F6E73  # "cons"
BREAK_GLASS_LOCK = 0x62676C73  # "bgls": with the practitioner's hash, serialises its daily count

TEXTS = Labels(kek=b"medledger consent texts kek v1", check=b"medledger consent data key check v1", content=b"text:")
BREAK_GLASS, REPRESENTATION = "break_glass", "representation"


def text_sealer(data_key: bytes) -> Sealer:
    """Seals justifications and review notes (the owner id names which)."""
    return Sealer(data_key, TEXTS)


def _justification_owner(break_glass_id: str) -> str:
    return f"justification:{break_glass_id}"


def _note_owner(kind: str, subject_id: str) -> str:
    return f"note:{kind}:{subject_id}"


async def check_data_key(conn: Conn, kek_id: str) -> str:
    """Record the data key's check id on first use; return the recorded one."""
    await conn.execute("INSERT INTO data_key (kek_id) VALUES ($1) ON CONFLICT DO NOTHING", kek_id)
    return str(await conn.fetchval("SELECT kek_id FROM data_key"))


async def seal_plaintext_justifications(conn: Conn, sealer: Sealer) -> int:
    """Seal justifications stored before texts were sealed, and erase the
    plaintext; how many. Safe on several replicas at once."""
    rows = await conn.fetch("SELECT break_glass_id, justification FROM break_glass WHERE justification IS NOT NULL")
    for row in rows:
        sealed = sealer.seal(_justification_owner(row["break_glass_id"]), row["justification"].encode())
        await conn.execute(
            "UPDATE break_glass SET kek_id = $2, wrapped_key = $3, justification_sealed = $4, justification = NULL"
            " WHERE break_glass_id = $1 AND justification IS NOT NULL",
            row["break_glass_id"], sealed.kek_id, sealed.wrapped_key, sealed.ciphertext,
        )
    return len(rows)


async def break_glass_since(conn: Conn, practitioner_id: str, since: datetime) -> int:
    """How many break-glasses the practitioner invoked since ``since``. Takes a
    transaction lock on the practitioner first, so concurrent invocations (on
    any replica) are counted one after the other."""
    await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", BREAK_GLASS_LOCK, practitioner_id)
    return int(await conn.fetchval(
        "SELECT count(*) FROM break_glass WHERE practitioner_id = $1 AND invoked_at > $2", practitioner_id, since
    ))


async def insert_break_glass(conn: Conn, sealer: Sealer, record: BreakGlassRecord, reason: str, justification: str) -> None:
    sealed = sealer.seal(_justification_owner(record.break_glass_id), justification.encode())
    await conn.execute(
        "INSERT INTO break_glass (break_glass_id, patient_id, practitioner_id, organization_id, kek_id, wrapped_key,"
        " justification_sealed, justification_sha256, invoked_at, valid_until, event_id, reason)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        record.break_glass_id, record.patient_id, record.practitioner_id, record.organization_id, sealed.kek_id,
        sealed.wrapped_key, sealed.ciphertext, record.justification_sha256, record.invoked_at, record.valid_until,
        record.event_id, reason,
    )


async def justifications(conn: Conn, sealer: Sealer, break_glass_ids: Iterable[str]) -> dict[str, str]:
    """break-glass id -> justification, opened."""
    rows = await conn.fetch(
        "SELECT break_glass_id, kek_id, wrapped_key, justification_sealed FROM break_glass"
        " WHERE break_glass_id = ANY($1::text[]) AND justification_sealed IS NOT NULL",
        list(break_glass_ids),
    )
    return {
        r["break_glass_id"]: sealer.open(
            _justification_owner(r["break_glass_id"]),
            Sealed(r["kek_id"], bytes(r["wrapped_key"]), bytes(r["justification_sealed"])),
        ).decode()
        for r in rows
    }


async def insert_review(
    conn: Conn, sealer: Sealer, kind: str, subject_id: str, patient_id: str, outcome: str, reviewer_id: str,
    reviewed_at: datetime, note: str,
) -> None:
    """Keep a review's note sealed; a break-glass row also takes the outcome."""
    sealed = sealer.seal(_note_owner(kind, subject_id), note.encode())
    await conn.execute(
        "INSERT INTO review_notes (subject_kind, subject_id, patient_id, outcome, reviewer_id, reviewed_at, kek_id,"
        " wrapped_key, note_sealed) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        kind, subject_id, patient_id, outcome, reviewer_id, reviewed_at, sealed.kek_id, sealed.wrapped_key,
        sealed.ciphertext,
    )
    if kind == BREAK_GLASS:
        await conn.execute(
            "UPDATE break_glass SET review_status = $2, reviewed_by = $3, reviewed_at = $4 WHERE break_glass_id = $1",
            subject_id, outcome, reviewer_id, reviewed_at,
        )


async def review_notes(conn: Conn, sealer: Sealer, kind: str, subject_ids: Iterable[str]) -> dict[str, str]:
    """subject id -> the review's note, opened."""
    rows = await conn.fetch(
        "SELECT subject_id, kek_id, wrapped_key, note_sealed FROM review_notes"
        " WHERE subject_kind = $1 AND subject_id = ANY($2::text[])",
        kind, list(subject_ids),
    )
    return {
        r["subject_id"]: sealer.open(
            _note_owner(kind, r["subject_id"]), Sealed(r["kek_id"], bytes(r["wrapped_key"]), bytes(r["note_sealed"]))
        ).decode()
        for r in rows
    }


async def pending_review(conn: Conn) -> tuple[int, float | None]:
    """How many break-glass accesses await review, and when (Unix time) the
    oldest of them was invoked (None when none waits). For metrics."""
    row = await conn.fetchrow(
        "SELECT count(*) AS n, extract(epoch FROM min(invoked_at)) AS oldest FROM break_glass"
        " WHERE review_status = 'PENDING_REVIEW'"
    )
    return int(row["n"]), None if row["oldest"] is None else float(row["oldest"])


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
