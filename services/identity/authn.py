"""Proof of key possession and token issuance (docs/architecture.md, Security model).

Challenge stores a random nonce bound to the identity and its current key;
IssueToken removes it before looking at the signature, so a nonce is spent by
its first use whatever the outcome (no replay, no guessing) and any replica can
serve either call. Tokens carry what every service needs to authorize offline:
subject, kind and the organizations of the subject's active memberships.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

import asyncpg

from medledger.identity import domain, store
from medledger.identity.registry import now
from medledger.identity.settings import TokenKeys
from medledger.runtime.auth import Caller, mint_token
from medledger.runtime.errors import NotFound, Unauthenticated


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
        nonce = secrets.token_bytes(domain.CHALLENGE_NONCE_BYTES)
        async with self._pool().acquire() as conn:
            state = await store.load(conn, identity_id)
            if state is None:
                raise NotFound(f"no identity {identity_id}")
            pending = domain.issue_challenge(state, key_id, now(), self.challenge_ttl_s)
            await store.add_challenge(conn, nonce, pending)
        return Challenge(nonce, pending.key_id, domain.challenge_message(identity_id, nonce), pending.expires_at)

    async def issue_token(self, identity_id: str, nonce: bytes, signature: bytes, key_id: str = "") -> IssuedToken:
        async with self._pool().acquire() as conn:
            spent = await store.take_challenge(conn, nonce)  # committed on its own: spent even if what follows fails
            signing_key_id = domain.redeem_challenge(spent, identity_id, key_id, now())
            state = await store.load(conn, identity_id)
        if state is None:
            raise Unauthenticated(f"no identity {identity_id}")
        key = domain.authentication_key(state, signing_key_id)
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
