"""Proof of key possession and token issuance (DESIGN.md, Security model).

Challenge stores a random nonce bound to the identity and its current key;
IssueToken removes it before looking at the signature, so a nonce is spent by
its first use whatever the outcome (no replay, no guessing) and any replica can
serve either call. Tokens carry what every service needs to authorize offline:
subject, kind and the organizations of the subject's active memberships.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

import asyncpg

from medledger.identity import domain, store
from medledger.identity.registry import now
from medledger.identity.settings import TokenKeys
from medledger.runtime.auth import Caller, mint_token
from medledger.runtime.errors import NotFound, Unauthenticated

NONCE_BYTES = 32


@dataclass(frozen=True)
class Challenge:
    nonce: bytes
    key_id: str
    message: bytes
    expires_at: datetime


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_at: datetime


class Authenticator:
    def __init__(self, pool: Callable[[], asyncpg.Pool], keys: TokenKeys, token_ttl_s: int, challenge_ttl_s: int) -> None:
        self._pool = pool  # raises DependencyUnavailable until connected
        self.keys = keys
        self.token_ttl_s = token_ttl_s
        self.challenge_ttl_s = challenge_ttl_s

    async def challenge(self, identity_id: str, key_id: str = "") -> Challenge:
        nonce = secrets.token_bytes(NONCE_BYTES)
        expires_at = now() + timedelta(seconds=self.challenge_ttl_s)
        async with self._pool().acquire() as conn:
            state = await store.load(conn, identity_id)
            if state is None:
                raise NotFound(f"no identity {identity_id}")
            key = domain.authentication_key(state, key_id)
            await store.add_challenge(conn, nonce, identity_id, key.key_id, expires_at)
        return Challenge(nonce, key.key_id, domain.challenge_message(identity_id, nonce), expires_at)

    async def issue_token(self, identity_id: str, nonce: bytes, signature: bytes, key_id: str = "") -> IssuedToken:
        async with self._pool().acquire() as conn:
            spent = await store.take_challenge(conn, nonce)  # committed on its own: spent even if what follows fails
            if spent is None or spent["identity_id"] != identity_id:
                raise Unauthenticated("unknown or already used nonce; ask for a new challenge")
            if spent["expires_at"] <= now():
                raise Unauthenticated("the challenge expired; ask for a new one")
            if key_id and key_id != spent["key_id"]:
                raise Unauthenticated("the challenge was issued for another key")
            state = await store.load(conn, identity_id)
        if state is None:
            raise Unauthenticated(f"no identity {identity_id}")
        key = domain.authentication_key(state, spent["key_id"])
        if not domain.signature_verifies(key.public_key, domain.challenge_message(identity_id, nonce), signature):
            raise Unauthenticated("the signature does not verify with the identity's current key")
        return self.mint(state)

    def mint(self, state: domain.Identity) -> IssuedToken:
        issued = now()
        caller = Caller(state.identity_id, state.kind.value, state.active_organizations)
        token = mint_token(
            self.keys.signing_key, self.keys.signing_key_id, caller, self.token_ttl_s,
            now=issued.timestamp(), token_id=secrets.token_hex(16),
        )
        expires = datetime.fromtimestamp(int(issued.timestamp()) + self.token_ttl_s, issued.tzinfo)
        return IssuedToken(token, expires)
