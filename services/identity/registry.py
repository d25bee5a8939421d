"""The identity service's application layer: each command runs as load →
decide → evolve → save + tracking row + outbox row, in ONE transaction, then
waits (bounded) until the relay has published its events.

Why an outbox rather than publish-then-consume: decisions need a consistent,
locked view (a key used by nobody else, one MRN per organization, a caller not
revoked a moment ago), which the database gives and an asynchronous projection
does not. The events are then published from the outbox by the relay, which
after a crash recognises what already reached Kafka (see relay.py), so an event
is never lost and never written to the topic twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Awaitable, Callable, Sequence

import asyncpg
import uuid6

from medledger.identity import codec, domain, store
from medledger.identity.domain import Acceptance, Command, Event, Identity, Kind
from medledger.identity.vault import Vault
from medledger.runtime.auth import Caller
from medledger.runtime.outbox import Outbox
from medledger.runtime.errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated
from medledger.v1 import identity_pb2

log = logging.getLogger(__name__)

PublishWait = Callable[[Sequence[str]], Awaitable[None]]


def now() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    """A fresh opaque id (UUIDv7: unique and time-ordered)."""
    return str(uuid6.uuid7())


@dataclass(frozen=True)
class Outcome:
    state: Identity
    event_ids: list[str]


@dataclass(frozen=True)
class Registration:
    """What RegisterIdentity asks for; demographics and MRN stay in this database."""

    kind: Kind
    public_key: bytes
    assurance_level: str = ""
    organization_type: str = ""
    demographics: identity_pb2.Demographics | None = None
    medical_record_number: str = ""


Builder = Callable[[store.Conn, Identity], Awaitable[Command]]


class Registry:
    def __init__(
        self, pool: Callable[[], asyncpg.Pool], outbox: Outbox, vault: Vault, wait_published: PublishWait,
        acceptance_max_age: timedelta = timedelta(days=1),
    ) -> None:
        self._pool = pool  # raises DependencyUnavailable until connected
        self.outbox = outbox
        self.topic = outbox.topic
        self.vault = vault
        self.wait_published = wait_published
        self.acceptance_max_age = acceptance_max_age  # a member's signed acceptance of a membership

    # ---- writing ----------------------------------------------------------------

    async def record(self, conn: store.Conn, state: Identity | None, events: list[Event], actor: str) -> Outcome:
        """Apply events to the projection with their tracking and outbox rows.
        Must run inside the caller's transaction."""
        ids = []
        for event in events:
            env = codec.to_envelope(event, actor)
            state = domain.evolve(state, event)
            await store.mark_applied(conn, env.event_id, self.topic, None, None)
            await self.outbox.enqueue(conn, env)
            ids.append(env.event_id)
        if state is None:
            raise ValueError("record() needs at least one event for an unknown identity")
        await store.save(conn, state)
        return Outcome(state, ids)

    async def _caller(self, conn: store.Conn, caller: Caller) -> Identity:
        state = await store.load(conn, caller.subject)
        if state is None:
            raise Unauthenticated(f"token subject {caller.subject} is not a known identity")
        return state

    async def _run(self, caller: Caller, target_id: str, build: Builder) -> Outcome:
        """One command on ``target_id`` (row-locked), decided as ``caller``."""
        try:
            async with self._pool().acquire() as conn, conn.transaction():
                actor = await self._caller(conn, caller)
                state = await store.load(conn, target_id, lock=True)
                if state is not None and state.identity_id == actor.identity_id:
                    actor = state
                events = domain.decide(state, await build(conn, actor))
                outcome = await self.record(conn, state, events, actor.identity_id)
        except asyncpg.UniqueViolationError:
            raise AlreadyExists("this public key is already registered to an identity") from None
        await self.wait_published(outcome.event_ids)
        return outcome

    async def _register_in(self, conn: store.Conn, actor: Identity | None, r: Registration, identity_id: str) -> Outcome:
        public_key = domain.check_public_key(r.public_key)
        if await store.key_owner(conn, domain.key_id_for(public_key)) is not None:
            raise AlreadyExists("this public key is already registered to an identity")
        command = domain.Register(identity_id, r.kind, public_key, r.assurance_level, r.organization_type, actor, now())
        outcome = await self.record(conn, None, domain.decide(None, command), actor.identity_id if actor else "")
        if r.demographics is not None and r.demographics.ListFields():
            domain.check_demographics({field.name: value for field, value in r.demographics.ListFields()})
            sealed = self.vault.seal(identity_id, r.demographics.SerializeToString())
            await store.put_demographics(conn, identity_id, sealed)
        if r.medical_record_number:
            await self._index_mrn(conn, actor, r, identity_id)
        return outcome

    async def _index_mrn(self, conn: store.Conn, actor: Identity | None, r: Registration, identity_id: str) -> None:
        domain.check_mrn(r.kind, actor, r.medical_record_number)
        assert actor is not None
        mrn_hash = self.vault.mrn_hash(actor.identity_id, r.medical_record_number)
        if not await store.add_mrn(conn, actor.identity_id, mrn_hash, identity_id):
            raise AlreadyExists("this organization already registered a patient with that medical record number")

    async def register(self, caller: Caller, registration: Registration) -> Outcome:
        try:
            async with self._pool().acquire() as conn, conn.transaction():
                actor = await self._caller(conn, caller)
                outcome = await self._register_in(conn, actor, registration, new_id())
        except asyncpg.UniqueViolationError:
            raise AlreadyExists("this public key is already registered to an identity") from None
        await self.wait_published(outcome.event_ids)
        return outcome

    async def bootstrap(self, conn: store.Conn, public_key: bytes, identity_id: str) -> Outcome | None:
        """Register the bootstrap OPERATOR organization if the database holds no
        identity at all; None (and a log line) otherwise."""
        async with conn.transaction():
            if await store.any_identity(conn):
                if await store.load(conn, identity_id) is None:
                    log.warning("identities exist: the bootstrap organization setting is ignored")
                return None
            registration = Registration(Kind.ORGANIZATION, public_key, organization_type=domain.OPERATOR)
            outcome = await self._register_in(conn, None, registration, identity_id)
        log.info("registered the bootstrap organization", extra={"identity_id": identity_id})
        return outcome

    async def rotate_key(self, caller: Caller, identity_id: str, public_key: bytes) -> Outcome:
        async def build(conn: store.Conn, actor: Identity) -> Command:
            owner = await store.key_owner(conn, domain.key_id_for(domain.check_public_key(public_key)))
            if owner is not None and owner != identity_id:
                raise AlreadyExists("this public key is already registered to another identity")
            return domain.RotateKey(public_key, actor, now())

        return await self._run(caller, identity_id, build)

    async def revoke_key(self, caller: Caller, identity_id: str, key_id: str) -> Outcome:
        async def build(conn: store.Conn, actor: Identity) -> Command:
            return domain.RevokeKey(key_id, actor, now())

        return await self._run(caller, identity_id, build)

    async def revoke_identity(self, caller: Caller, identity_id: str, reason: str) -> Outcome:
        async def build(conn: store.Conn, actor: Identity) -> Command:
            return domain.RevokeIdentity(reason, actor, now())

        return await self._run(caller, identity_id, build)

    async def grant_membership(
        self, caller: Caller, member_id: str, organization_id: str, role: str, acceptance: Acceptance | None = None
    ) -> Outcome:
        async def build(conn: store.Conn, actor: Identity) -> Command:
            organization = await store.load(conn, organization_id)
            return domain.GrantMembership(
                new_id(), organization, organization_id, role, actor, now(), acceptance, self.acceptance_max_age
            )

        return await self._run(caller, member_id, build)

    async def end_membership(self, caller: Caller, membership_id: str) -> Outcome:
        async with self._pool().acquire() as conn:
            member_id = await store.member_of_membership(conn, membership_id)
        if member_id is None:
            raise NotFound(f"no membership {membership_id}")

        async def build(conn: store.Conn, actor: Identity) -> Command:
            return domain.EndMembership(membership_id, actor, now())

        return await self._run(caller, member_id, build)

    # ---- reading ----------------------------------------------------------------

    async def get(self, identity_id: str) -> Identity:
        async with self._pool().acquire() as conn:
            state = await store.load(conn, identity_id)
        if state is None:
            raise NotFound(f"no identity {identity_id}")
        return state

    async def view(self, caller: Caller, identity_id: str) -> tuple[Identity, identity_pb2.Demographics | None]:
        """The identity and, if the caller may see them, its demographics."""
        async with self._pool().acquire() as conn:
            state = await store.load(conn, identity_id)
            if state is None:
                raise NotFound(f"no identity {identity_id}")
            viewer = state if caller.subject == identity_id else await store.load(conn, caller.subject)
            if not domain.may_see_demographics(viewer, state):
                return state, None
            sealed = await store.get_demographics(conn, identity_id)
        if sealed is None:
            return state, None
        return state, identity_pb2.Demographics.FromString(self.vault.open(identity_id, sealed))

    async def find_patient(self, caller: Caller, mrn: str) -> str:
        if not mrn.strip():
            raise InvalidArgument("medical_record_number is required")
        async with self._pool().acquire() as conn:
            domain.check_mrn_lookup(await store.load(conn, caller.subject))
            found = await store.find_by_mrn(conn, caller.subject, self.vault.mrn_hash(caller.subject, mrn))
        if found is None:
            raise NotFound("this organization registered no patient with that medical record number")
        return found
