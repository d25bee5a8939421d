"""The records projection's fold of identities' keys (records/projection.py,
migration 0005) on a real PostgreSQL: it holds what identity's own fold holds,
a database from before the migration folds identity.events again from the
start, and folding identity events again (tracked or not, any number of
times) changes nothing."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg

from medledger.identity import codec
from medledger.identity import domain as identity
from medledger.records import domain, projection, store
from medledger.runtime.consumer import Opened
from medledger.runtime.postgres import prepare_database
from medledger.runtime.positions import Delivery
from medledger.runtime.settings import Topics
from medledger.testing.identity import generate_key, raw_public

MIGRATIONS = Path(projection.__file__).parent / "migrations"
T0 = datetime(2025, 3, 1, 9, tzinfo=timezone.utc)
MINUTE = timedelta(minutes=1)
TOPICS = Topics("old-deployment.")


def keys(n: int) -> list[tuple[bytes, str]]:
    publics = [raw_public(generate_key()) for _ in range(n)]
    return [(p, identity.key_id_for(p)) for p in publics]


def doc_history() -> list[identity.Event]:
    (p1, k1), (p2, k2), (p3, k3) = keys(3)
    return [
        identity.IdentityRegistered("doc", identity.Kind.PRACTITIONER, k1, p1, "IAL2", "org", "", T0),
        identity.MembershipGranted("m-1", "doc", "org", "physician", T0 + MINUTE),
        identity.KeyRotated("doc", k2, p2, k1, T0 + 10 * MINUTE),
        identity.KeyRevoked("doc", k1, T0 + 20 * MINUTE),
        identity.KeyRotated("doc", k3, p3, k2, T0 + 30 * MINUTE),
        identity.KeyRevoked("doc", k3, T0 + 35 * MINUTE),
        identity.MembershipEnded("m-1", "doc", "org", T0 + 38 * MINUTE),
        identity.IdentityRevoked("doc", "AFFILIATION_CHANGED", T0 + 40 * MINUTE),
    ]


def delivered(events: list[identity.Event]) -> list[Opened]:
    return [Opened(Delivery(TOPICS.identity_events, 0, offset, None), codec.to_envelope(e, "org"))
            for offset, e in enumerate(events)]


async def tables(conn: asyncpg.Connection) -> dict[str, list[Any]]:
    return {t: [tuple(r) for r in await conn.fetch(f"SELECT * FROM {t} ORDER BY 1, 2")]
            for t in ("signing_keys", "identities", "memberships")}


def key_facts(keys: tuple[identity.Key, ...]) -> list[tuple[Any, ...]]:
    return [(k.key_id, k.public_key, k.valid_from, k.replaced_at, k.revoked_at) for k in keys]


async def test_an_old_deployment_refolds_identity_events_and_ends_with_identitys_keys(
    database_url: str, tmp_path: Path,
) -> None:
    before = tmp_path / "migrations"
    before.mkdir()
    for sql in sorted(MIGRATIONS.glob("000[1-4]_*.sql")):
        shutil.copy(sql, before)
    await prepare_database(database_url, before)
    events = doc_history()
    state = identity.fold(events)
    assert state is not None
    conn = await asyncpg.connect(database_url)
    try:
        # What the projection held before: every identity event tracked, its
        # position past them all (key events were skipped untracked).
        log = delivered(events)
        old = [o for o in log if o.envelope.event_type in projection.APPLY]
        async with conn.transaction():
            for o in old:
                await projection.APPLY[o.envelope.event_type](conn, o.envelope)
                await conn.execute('INSERT INTO applied_events (event_id, topic, partition, "offset")'
                                   " VALUES ($1, $2, $3, $4)", o.envelope.event_id, o.delivery.topic, 0,
                                   o.delivery.offset)
            await conn.executemany("INSERT INTO projection_positions VALUES ($1, $2, $3)",
                                   [(TOPICS.identity_events, 0, len(events)), (TOPICS.consent_events, 0, 7)])
        await prepare_database(database_url, MIGRATIONS)

        # identity.events starts over from offset 0; consent.events resumes.
        positions = await projection.stored_positions(conn, [TOPICS.identity_events, TOPICS.consent_events])
        assert positions == {(TOPICS.consent_events, 0): 7}

        async with conn.transaction():
            assert await projection.apply_batch(conn, log, {(TOPICS.identity_events, 0): len(events)}) == 0
        folded = await tables(conn)
        facts = await store.command_facts(conn, "patient", "doc")
        assert key_facts(facts.keys) == key_facts(state.keys)
        assert facts.party is not None and not facts.party.active and not facts.party.organizations
        for key in state.keys:  # the answer a write gets is the one identity gives
            projected = domain.resolve_key("doc", True, facts.keys, key.key_id, T0 + 15 * MINUTE)
            assert (projected.valid_until, projected.revoked_at) == (key.valid_until, key.revoked_at)

        # Folding again changes nothing: the key part again (as a second
        # replica or a restart does), then every handler with tracking cleared.
        async with conn.transaction():
            await projection.apply_batch(conn, log, {})
        assert await tables(conn) == folded
        await conn.execute("DELETE FROM applied_events")
        async with conn.transaction():
            assert await projection.apply_batch(conn, log, {}) == len(old)
        assert await tables(conn) == folded
    finally:
        await conn.close()
