"""The records service's projection of identity.events and consent.events,
kept in its own database (docs/architecture.md, Consumers and positions).

One PositionedConsumer reads both topics; only envelopes that pass event
signing are applied. Each batch's effects, a tracking row per applied event
(``applied_events``) and the next offsets (``projection_offsets``) commit
in one transaction, so a restart resumes exactly where it stopped and a
redelivered event is recognised and skipped.

Identities' signing keys (``signing_keys``: IdentityRegistered's first key,
KeyRotated, KeyRevoked) are folded too, with the rules of identity's
ResolveKey (records/domain.resolve_key), so writes check authors' and erasure
signers' keys without asking identity. Their statements are idempotent and
run for every identity event read, tracked or not: migration 0005 has the
projection read identity.events again from offset 0 to fill the table, past
events whose other effects applied_events already holds.

Commands call ``sync()`` before deciding (runtime/log_sync.LogSync): it waits
until the projection has applied everything the topics held when the command
arrived, so a patient registered, a consent granted or a key revoked a moment
ago is seen (read-your-log): there is no window in which a revoked key still
signs.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Sequence, TypeVar

import asyncpg
from google.protobuf.message import Message

from medledger.records import domain
from medledger.runtime.consumer import WAKE_PER_RECORD, Opened, PositionedConsumer
from medledger.runtime.envelope import EnvelopeVerifier
from medledger.runtime.log_sync import LogSync, by_partition
from medledger.runtime.outbox import Conn
from medledger.runtime.settings import Topics
from medledger.v1 import consent_pb2, events_pb2, identity_pb2

log = logging.getLogger(__name__)

Apply = Callable[[Conn, events_pb2.EventEnvelope], Awaitable[None]]


M = TypeVar("M", bound=Message)


def _unpack(env: events_pb2.EventEnvelope, cls: type[M]) -> M:
    message = cls()
    env.payload.Unpack(message)
    return message


async def _registered(conn: Conn, env: events_pb2.EventEnvelope) -> None:
    e = _unpack(env, identity_pb2.IdentityRegistered)
    await conn.execute(
        "INSERT INTO identities (identity_id, kind, active, registered_by, organization_type)"
        " VALUES ($1, $2, true, $3, $4) ON CONFLICT (identity_id) DO NOTHING",
        e.identity_id, identity_pb2.IdentityKind.Name(e.kind), e.registered_by, e.organization_type,
    )


async def _identity_revoked(conn: Conn, env: events_pb2.EventEnvelope) -> None:
    e = _unpack(env, identity_pb2.IdentityRevoked)
    await conn.execute("UPDATE identities SET active = false WHERE identity_id = $1", e.identity_id)


async def _membership_granted(conn: Conn, env: events_pb2.EventEnvelope) -> None:
    e = _unpack(env, identity_pb2.MembershipGranted)
    await conn.execute(
        "INSERT INTO memberships (membership_id, member_id, organization_id, active) VALUES ($1, $2, $3, true)"
        " ON CONFLICT (membership_id) DO NOTHING",
        e.membership_id, e.member_id, e.organization_id,
    )


async def _membership_ended(conn: Conn, env: events_pb2.EventEnvelope) -> None:
    e = _unpack(env, identity_pb2.MembershipEnded)
    await conn.execute(
        "INSERT INTO memberships (membership_id, member_id, organization_id, active) VALUES ($1, $2, $3, false)"
        " ON CONFLICT (membership_id) DO UPDATE SET active = false",
        e.membership_id, e.member_id, e.organization_id,
    )


async def _consent_granted(conn: Conn, env: events_pb2.EventEnvelope) -> None:
    e = _unpack(env, consent_pb2.ConsentGranted)
    t = e.terms
    await conn.execute(
        "INSERT INTO consents (consent_id, patient_id, grantee_id, purposes, record_ids, valid_from, valid_until)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (consent_id) DO NOTHING",
        t.consent_id, t.patient_id, t.grantee_id, list(t.purposes), list(t.scope.record_ids),
        domain.utc(t.valid_from), domain.utc(t.valid_until),
    )


async def _consent_revoked(conn: Conn, env: events_pb2.EventEnvelope) -> None:
    e = _unpack(env, consent_pb2.ConsentRevoked)
    await conn.execute("UPDATE consents SET revoked = true WHERE consent_id = $1", e.consent_id)


async def _break_glass(conn: Conn, env: events_pb2.EventEnvelope) -> None:
    e = _unpack(env, consent_pb2.BreakGlassInvoked)
    await conn.execute(
        "INSERT INTO break_glass (break_glass_id, patient_id, practitioner_id, organization_id, valid_until)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (break_glass_id) DO NOTHING",
        e.break_glass_id, e.patient_id, e.practitioner_id, e.organization_id, domain.utc(e.valid_until),
    )


async def _representative(conn: Conn, env: events_pb2.EventEnvelope) -> None:
    e = _unpack(env, consent_pb2.RepresentativeRegistered)
    await _representation(conn, e.patient_id, e.representative_id, True)


async def _representation_ended(conn: Conn, env: events_pb2.EventEnvelope) -> None:
    e = _unpack(env, consent_pb2.RepresentationEnded)
    await _representation(conn, e.patient_id, e.representative_id, False)


async def _representation(conn: Conn, patient_id: str, representative_id: str, active: bool) -> None:
    await conn.execute(
        "INSERT INTO representatives (patient_id, representative_id, active) VALUES ($1, $2, $3)"
        " ON CONFLICT (patient_id, representative_id) DO UPDATE SET active = $3",
        patient_id, representative_id, active,
    )


# ---- signing keys: idempotent, applied whether or not the event is tracked ----


async def _first_key(conn: Conn, env: events_pb2.EventEnvelope) -> None:
    e = _unpack(env, identity_pb2.IdentityRegistered)
    await conn.execute(
        "INSERT INTO signing_keys (identity_id, key_id, ordinal, public_key, valid_from) VALUES ($1, $2, 0, $3, $4)"
        " ON CONFLICT (identity_id, key_id) DO NOTHING",
        e.identity_id, e.key_id, e.public_key, domain.utc(env.occurred_at),
    )


async def _key_rotated(conn: Conn, env: events_pb2.EventEnvelope) -> None:
    """The new key goes after the identity's others; those not replaced yet
    that come before it end where it starts (identity/domain.evolve). Keyed by
    the new key's ordinal rather than "every unreplaced key", so folding the
    rotation again never retires a key a later rotation added."""
    e = _unpack(env, identity_pb2.KeyRotated)
    at = domain.utc(env.occurred_at)
    await conn.execute(
        "INSERT INTO signing_keys (identity_id, key_id, ordinal, public_key, valid_from)"
        " SELECT $1, $2, coalesce(max(ordinal) + 1, 0), $3, $4 FROM signing_keys WHERE identity_id = $1"
        " ON CONFLICT (identity_id, key_id) DO NOTHING",
        e.identity_id, e.key_id, e.public_key, at,
    )
    await conn.execute(
        "UPDATE signing_keys SET replaced_at = $3 WHERE identity_id = $1 AND replaced_at IS NULL"
        " AND ordinal < (SELECT ordinal FROM signing_keys WHERE identity_id = $1 AND key_id = $2)",
        e.identity_id, e.key_id, at,
    )


async def _key_revoked(conn: Conn, env: events_pb2.EventEnvelope) -> None:
    e = _unpack(env, identity_pb2.KeyRevoked)
    await conn.execute(
        "UPDATE signing_keys SET revoked_at = $3 WHERE identity_id = $1 AND key_id = $2",
        e.identity_id, e.key_id, domain.utc(env.occurred_at),
    )


KEYS: dict[str, Apply] = {
    "medledger.v1.IdentityRegistered": _first_key,
    "medledger.v1.KeyRotated": _key_rotated,
    "medledger.v1.KeyRevoked": _key_revoked,
}

APPLY: dict[str, Apply] = {
    "medledger.v1.IdentityRegistered": _registered,
    "medledger.v1.IdentityRevoked": _identity_revoked,
    "medledger.v1.MembershipGranted": _membership_granted,
    "medledger.v1.MembershipEnded": _membership_ended,
    "medledger.v1.ConsentGranted": _consent_granted,
    "medledger.v1.ConsentRevoked": _consent_revoked,
    "medledger.v1.BreakGlassInvoked": _break_glass,
    "medledger.v1.RepresentativeRegistered": _representative,
    "medledger.v1.RepresentationEnded": _representation_ended,
}


async def apply_batch(conn: Conn, opened: Sequence[Opened], positions: dict[tuple[str, int], int]) -> int:
    """Apply verified envelopes and store the positions, in the caller's
    transaction; returns how many were new."""
    applied = 0
    for item in opened:
        env, where = item.envelope, item.delivery
        keys = KEYS.get(env.event_type)
        if keys is not None:
            await keys(conn, env)
        apply = APPLY.get(env.event_type)
        if apply is None:
            continue  # nothing else records keeps
        fresh = await conn.fetchval(
            'INSERT INTO applied_events (event_id, topic, partition, "offset") VALUES ($1, $2, $3, $4)'
            " ON CONFLICT (event_id) DO NOTHING RETURNING true",
            env.event_id, where.topic, where.partition, where.offset,
        )
        if fresh:
            await apply(conn, env)
            applied += 1
    await conn.executemany(
        "INSERT INTO projection_offsets (topic, partition, next_offset) VALUES ($1, $2, $3)"
        " ON CONFLICT (topic, partition) DO UPDATE SET next_offset = $3",
        [(topic, partition, offset) for (topic, partition), offset in positions.items()],
    )
    return applied


async def stored_positions(conn: Conn, topics: Sequence[str]) -> dict[tuple[str, int], int]:
    rows = await conn.fetch(
        "SELECT topic, partition, next_offset FROM projection_offsets WHERE topic = ANY($1::text[])", list(topics)
    )
    return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}


class RecordsProjection:
    """Runs the consumer (restarted by the caller on failure) and answers sync()."""

    def __init__(self, bootstrap: str, topics: Topics, verifier: EnvelopeVerifier, pool: Callable[[], asyncpg.Pool]) -> None:
        self.bootstrap = bootstrap
        self.watched = (topics.identity_events, topics.consent_events)
        self.verifier = verifier
        self.pool = pool
        self.caught_up = asyncio.Event()
        self.log_sync = LogSync("the records projection", "identity and consent events")

    async def run(self) -> None:
        async with self.pool().acquire() as conn:
            applied = await stored_positions(conn, self.watched)
        self.log_sync.advanced(by_partition(applied))
        consumer = PositionedConsumer(self.bootstrap, self.watched, reader="records projection", **WAKE_PER_RECORD)
        try:
            await consumer.start(applied)
            self.log_sync.attach(await consumer.ends_client())
            while True:
                self.log_sync.watch(consumer.partitions)
                deliveries = await consumer.fetch(timeout_ms=200, max_records=2000)
                positions = await consumer.positions()
                opened = await consumer.opened(deliveries, self.verifier)
                if deliveries or positions != applied:
                    async with self.pool().acquire() as conn, conn.transaction():
                        await apply_batch(conn, opened, positions)
                applied = positions
                self.log_sync.advanced(by_partition(applied))
                if not self.caught_up.is_set() and not await consumer.behind(await consumer.end_offsets()):
                    log.info("records projection caught up")
                    self.caught_up.set()
        finally:
            self.log_sync.detach()
            await consumer.stop()

    async def sync(self, timeout: float) -> None:
        """Wait until every record on the watched topics now is applied;
        DependencyUnavailable if that takes longer than timeout."""
        await self.log_sync.sync(timeout)
