"""The identity service's own RevocationCheck (runtime/auth.py): its database
is where revocations happen, so it asks the database on every authenticated
call instead of following identity.events, and is never behind."""

from __future__ import annotations

from typing import Callable

import asyncpg

from medledger.identity import store
from medledger.runtime.auth import Caller
from medledger.runtime.revocations import refusal


class DatabaseRevocations:
    def __init__(self, pool: Callable[[], asyncpg.Pool]) -> None:
        self._pool = pool  # raises DependencyUnavailable until connected

    async def check(self, claims: Caller) -> None:
        """Refuse the token of a revoked subject, of a revoked key, or listing
        an organization that is no longer one of its memberships. An unknown
        subject is left to the handlers (commands answer UNAUTHENTICATED)."""
        async with self._pool().acquire() as conn:
            standing = await store.token_standing(conn, claims.subject, claims.key_id)
        if standing is None:
            return
        revoked, key_revoked, organizations = standing
        ended = [org for org in claims.organizations if org not in organizations]
        error = refusal(claims, subject_revoked=revoked, key_revoked=key_revoked, ended=ended)
        if error is not None:
            raise error
