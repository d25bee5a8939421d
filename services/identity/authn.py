"""Proof of key possession and token issuance (docs/architecture.md, Security model).

Challenge stores a random nonce bound to the identity and its current key;
IssueToken removes it before looking at the signature, so a nonce is spent by
its first use whatever the outcome (no replay, no guessing) and any replica can
serve either call. Tokens carry what every service needs to authorize offline:
subject, kind, the organizations of the subject's active memberships, the
services they are for (audience, named by the caller) and the key that
answered the challenge (so revoking that key voids them).

Challenge is public and writes a row, so it is rate-limited per identity asked
for and per calling address (token buckets, RESOURCE_EXHAUSTED beyond), and
``sweep`` deletes nonces nobody used once they expire.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Sequence

import asyncpg

from medledger.identity import domain, store
from medledger.identity.registry import now
from medledger.identity.settings import ChallengeLimits, TokenKeys
from medledger.runtime.auth import AUDIENCES, Caller, mint_token
from medledger.runtime.errors import InvalidArgument, NotFound, ResourceExhausted, Unauthenticated
from medledger.runtime.rate_limit import TokenBuckets, peer_host

log = logging.getLogger(__name__)


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


def check_audience(audience: Sequence[str]) -> tuple[str, ...]:
    """The services a token is asked for: one or more known ones, each once."""
    if not audience:
        raise InvalidArgument(f"audience is required: the services the token is for, of {', '.join(AUDIENCES)}")
    unknown = [a for a in audience if a not in AUDIENCES]
    if unknown:
        raise InvalidArgument(f"unknown audience {unknown[0][:64]!r}; one or more of {', '.join(AUDIENCES)}")
    if len(set(audience)) != len(audience):
        raise InvalidArgument("audience names a service twice")
    return tuple(audience)


class Authenticator:
    def __init__(
        self, pool: Callable[[], asyncpg.Pool], keys: TokenKeys, token_ttl_s: int, challenge_ttl_s: int,
        limits: ChallengeLimits, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool  # raises DependencyUnavailable until connected
        self.keys = keys
        self.token_ttl_s = token_ttl_s
        self.challenge_ttl_s = challenge_ttl_s
        self.limits = limits
        self.clock = clock
        self.per_identity = TokenBuckets(limits.identity_burst, limits.identity_per_minute)
        self.per_peer = TokenBuckets(limits.peer_burst, limits.peer_per_minute)

    def _admit(self, identity_id: str, peer: str) -> None:
        """RESOURCE_EXHAUSTED beyond the per-peer or per-identity rate. The peer
        is charged first, so one address cannot spend every identity's budget."""
        at = self.clock()
        for buckets, key, what in ((self.per_peer, peer_host(peer), "from this address"),
                                   (self.per_identity, identity_id, "for this identity")):
            if not buckets.take(key, at):
                wait = buckets.retry_after(key)
                raise ResourceExhausted(f"too many challenges {what}; try again in {wait:.0f} s")

    async def challenge(self, identity_id: str, key_id: str = "", peer: str = "") -> Challenge:
        self._admit(identity_id, peer)
        nonce = secrets.token_bytes(domain.CHALLENGE_NONCE_BYTES)
        async with self._pool().acquire() as conn:
            state = await store.load(conn, identity_id)
            if state is None:
                raise NotFound(f"no identity {identity_id}")
            pending = domain.issue_challenge(state, key_id, now(), self.challenge_ttl_s)
            await store.add_challenge(conn, nonce, pending)
        return Challenge(nonce, pending.key_id, domain.challenge_message(identity_id, nonce), pending.expires_at)

    async def issue_token(
        self, identity_id: str, nonce: bytes, signature: bytes, audience: Sequence[str], key_id: str = ""
    ) -> IssuedToken:
        async with self._pool().acquire() as conn:
            spent = await store.take_challenge(conn, nonce)  # committed on its own: spent even if what follows fails
            signing_key_id = domain.redeem_challenge(spent, identity_id, key_id, now())
            state = await store.load(conn, identity_id)
            registrar = await store.load(conn, state.registered_by) if domain.needs_audit_scope(state) else None
        wanted = check_audience(audience)
        if state is None:
            raise Unauthenticated(f"no identity {identity_id}")
        key = domain.authentication_key(state, signing_key_id)
        if not domain.signature_verifies(key.public_key, domain.challenge_message(identity_id, nonce), signature):
            raise Unauthenticated("the signature does not verify with the identity's current key")
        return self.mint(state, wanted, key.key_id, domain.audit_scope(state, registrar))

    async def sweep(self, stop: asyncio.Event) -> None:
        """Delete expired, unused nonces every sweep interval until stop is set
        (run under keep_running: a database outage restarts it). Every replica
        sweeps; the DELETE is idempotent."""
        while not stop.is_set():
            async with self._pool().acquire() as conn:
                swept = await store.sweep_challenges(conn)
            if swept:
                log.info("expired challenges deleted", extra={"count": swept})
            try:
                await asyncio.wait_for(stop.wait(), self.limits.sweep_interval_s)
            except asyncio.TimeoutError:
                pass

    def mint(self, state: domain.Identity, audience: tuple[str, ...], key_id: str, audit_scope: str = "") -> IssuedToken:
        issued = now()
        caller = Caller(
            state.identity_id, state.kind.value, state.active_organizations, audience=audience, key_id=key_id,
            audit_scope=audit_scope,
        )
        token = mint_token(
            self.keys.signing_key, self.keys.signing_key_id, caller, self.token_ttl_s,
            now=issued.timestamp(), token_id=secrets.token_hex(16),
        )
        expires = datetime.fromtimestamp(int(issued.timestamp()) + self.token_ttl_s, issued.tzinfo)
        return IssuedToken(token, expires)
