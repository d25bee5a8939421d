"""The identity service's PostgreSQL adapter: the projection (identities, keys,
memberships), its tracking rows, the outbox, challenges and sealed PHI.

Every write of a command or of a replayed event happens inside the caller's
transaction: the new state, its applied_events row and (for commands) its
outbox row commit together or not at all.
"""

from __future__ import annotations

from typing import Sequence, TypeAlias

import asyncpg

from medledger.identity.domain import Acceptance, Identity, Key, Kind, Membership, PendingChallenge, Status
from medledger.identity.vault import Sealed

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"

OUTBOX_CHANNEL = "identity_outbox"


# ---- projection ------------------------------------------------------------------


async def load(conn: Conn, identity_id: str, lock: bool = False) -> Identity | None:
    """The identity's state, None if unknown. ``lock`` takes the row lock that
    serialises commands on one identity until the transaction ends."""
    row = await conn.fetchrow(
        "SELECT * FROM identities WHERE identity_id = $1" + (" FOR UPDATE" if lock else ""), identity_id
    )
    if row is None:
        return None
    keys = await conn.fetch("SELECT * FROM identity_keys WHERE identity_id = $1 ORDER BY position", identity_id)
    members = await conn.fetch(
        "SELECT * FROM memberships WHERE member_id = $1 ORDER BY granted_at, membership_id", identity_id
    )
    return Identity(
        identity_id=row["identity_id"],
        kind=Kind(row["kind"]),
        assurance_level=row["assurance_level"],
        registered_by=row["registered_by"],
        organization_type=row["organization_type"],
        registered_at=row["registered_at"],
        keys=tuple(
            Key(k["key_id"], k["public_key"], k["valid_from"], k["replaced_at"], k["revoked_at"], k["previous_key_id"])
            for k in keys
        ),
        memberships=tuple(
            Membership(
                m["membership_id"], m["member_id"], m["organization_id"], m["role"], m["granted_at"], m["ended_at"],
                _acceptance(m),
            )
            for m in members
        ),
        status=Status(row["status"]),
        revoked_at=row["revoked_at"],
        revocation_reason=row["revocation_reason"],
    )


def _acceptance(row: asyncpg.Record) -> Acceptance | None:
    if row["acceptance_key_id"] is None:
        return None
    return Acceptance(row["acceptance_key_id"], row["accepted_at"], row["acceptance_nonce"], row["acceptance_signature"])


async def save(conn: Conn, state: Identity) -> None:
    """Write the whole aggregate (it is small: a few keys and memberships)."""
    await conn.execute(
        "INSERT INTO identities (identity_id, kind, status, assurance_level, registered_by, organization_type,"
        " registered_at, revoked_at, revocation_reason) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)"
        " ON CONFLICT (identity_id) DO UPDATE SET status = EXCLUDED.status, revoked_at = EXCLUDED.revoked_at,"
        " revocation_reason = EXCLUDED.revocation_reason",
        state.identity_id, state.kind.value, state.status.value, state.assurance_level, state.registered_by,
        state.organization_type, state.registered_at, state.revoked_at, state.revocation_reason,
    )
    await conn.executemany(
        "INSERT INTO identity_keys (key_id, identity_id, position, public_key, valid_from, replaced_at, revoked_at,"
        " previous_key_id) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)"
        " ON CONFLICT (key_id) DO UPDATE SET replaced_at = EXCLUDED.replaced_at, revoked_at = EXCLUDED.revoked_at",
        [
            (k.key_id, state.identity_id, i, k.public_key, k.valid_from, k.replaced_at, k.revoked_at, k.previous_key_id)
            for i, k in enumerate(state.keys)
        ],
    )
    await conn.executemany(
        "INSERT INTO memberships (membership_id, member_id, organization_id, role, granted_at, ended_at,"
        " acceptance_key_id, accepted_at, acceptance_nonce, acceptance_signature)"
        " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) ON CONFLICT (membership_id) DO UPDATE SET ended_at = EXCLUDED.ended_at",
        [
            (m.membership_id, m.member_id, m.organization_id, m.role, m.granted_at, m.ended_at)
            + ((a.key_id, a.accepted_at, a.nonce, a.signature) if (a := m.acceptance) else (None, None, None, None))
            for m in state.memberships
        ],
    )


async def key_owner(conn: Conn, key_id: str) -> str | None:
    """Which identity holds (or held) this key."""
    owner = await conn.fetchval("SELECT identity_id FROM identity_keys WHERE key_id = $1", key_id)
    return None if owner is None else str(owner)


async def member_of_membership(conn: Conn, membership_id: str) -> str | None:
    member = await conn.fetchval("SELECT member_id FROM memberships WHERE membership_id = $1", membership_id)
    return None if member is None else str(member)


async def any_identity(conn: Conn) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM identities)"))


async def mark_applied(conn: Conn, event_id: str, topic: str, partition: int | None, offset: int | None) -> bool:
    """The tracking row; False if the event was applied before (skip it)."""
    done = await conn.fetchval(
        'INSERT INTO applied_events (event_id, topic, partition, "offset") VALUES ($1,$2,$3,$4)'
        " ON CONFLICT (event_id) DO NOTHING RETURNING true",
        event_id, topic, partition, offset,
    )
    return bool(done)


async def applied_positions(conn: Conn, topic: str) -> dict[int, int]:
    """Per partition of ``topic``, the offset after the last record applied
    from it (the outbox knows where its own rows landed)."""
    rows = await conn.fetch(
        'SELECT partition, max("offset") AS last FROM applied_events'
        ' WHERE topic = $1 AND "offset" IS NOT NULL GROUP BY partition',
        topic,
    )
    return {int(r["partition"]): int(r["last"]) + 1 for r in rows}


# ---- challenges ------------------------------------------------------------------


async def add_challenge(conn: Conn, nonce: bytes, challenge: PendingChallenge) -> None:
    await conn.execute(
        "INSERT INTO challenges (nonce, identity_id, key_id, expires_at) VALUES ($1, $2, $3, $4)",
        nonce, challenge.identity_id, challenge.key_id, challenge.expires_at,
    )


async def take_challenge(conn: Conn, nonce: bytes) -> PendingChallenge | None:
    """Remove and return the challenge: a nonce is usable exactly once, even by
    two concurrent IssueToken calls on different replicas."""
    row = await conn.fetchrow(
        "DELETE FROM challenges WHERE nonce = $1 RETURNING identity_id, key_id, expires_at", nonce
    )
    return None if row is None else PendingChallenge(row["identity_id"], row["key_id"], row["expires_at"])


async def sweep_challenges(conn: Conn) -> int:
    """Delete every expired challenge (an unused nonce must not outlive its
    lifetime); the number deleted."""
    done = await conn.execute("DELETE FROM challenges WHERE expires_at < now()")
    return int(done.split()[-1])


# ---- tokens ----------------------------------------------------------------------


async def token_standing(conn: Conn, subject: str, key_id: str) -> tuple[bool, bool, frozenset[str]] | None:
    """For a token's subject: (revoked, the token's key revoked, organizations
    of its active memberships); None for an unknown subject. One round trip:
    it runs on every authenticated identity call."""
    row = await conn.fetchrow(
        "SELECT i.status = 'REVOKED' AS revoked,"
        " EXISTS (SELECT 1 FROM identity_keys k WHERE k.identity_id = i.identity_id AND k.key_id = $2"
        "         AND k.revoked_at IS NOT NULL) AS key_revoked,"
        " ARRAY(SELECT m.organization_id FROM memberships m WHERE m.member_id = i.identity_id"
        "       AND m.ended_at IS NULL) AS organizations"
        " FROM identities i WHERE i.identity_id = $1",
        subject, key_id,
    )
    if row is None:
        return None
    return bool(row["revoked"]), bool(row["key_revoked"]), frozenset(row["organizations"])


# ---- PHI -------------------------------------------------------------------------


async def put_demographics(conn: Conn, identity_id: str, sealed: Sealed) -> None:
    await conn.execute(
        "INSERT INTO demographics (identity_id, kek_id, wrapped_key, ciphertext) VALUES ($1, $2, $3, $4)",
        identity_id, sealed.kek_id, sealed.wrapped_key, sealed.ciphertext,
    )


async def get_demographics(conn: Conn, identity_id: str) -> Sealed | None:
    row = await conn.fetchrow("SELECT kek_id, wrapped_key, ciphertext FROM demographics WHERE identity_id = $1", identity_id)
    return None if row is None else Sealed(row["kek_id"], row["wrapped_key"], row["ciphertext"])


async def add_mrn(conn: Conn, organization_id: str, mrn_hash: bytes, identity_id: str) -> bool:
    """False if the organization already has a patient under this MRN."""
    added = await conn.fetchval(
        "INSERT INTO mrn_index (organization_id, mrn_hash, identity_id) VALUES ($1, $2, $3)"
        " ON CONFLICT DO NOTHING RETURNING true",
        organization_id, mrn_hash, identity_id,
    )
    return bool(added)


async def find_by_mrn(conn: Conn, organization_id: str, mrn_hash: bytes) -> str | None:
    found = await conn.fetchval(
        "SELECT identity_id FROM mrn_index WHERE organization_id = $1 AND mrn_hash = $2", organization_id, mrn_hash
    )
    return None if found is None else str(found)


async def check_data_key(conn: Conn, kek_id: str) -> str:
    """Record the data key's check id on first use; return the recorded one."""
    await conn.execute("INSERT INTO data_key (kek_id) VALUES ($1) ON CONFLICT DO NOTHING", kek_id)
    return str(await conn.fetchval("SELECT kek_id FROM data_key"))
