"""The identity outbox relay: the one writer of identity.events, and the
keeper of the projection's agreement with that topic.

It is the runtime's OutboxRelay (see runtime/outbox.py for the guarantees)
with one identity-specific hook: on becoming active it applies every verified
record of identity.events that this database has no tracking row for, so a
database restored from scratch is rebuilt from the topic. Demographics and
MRN hashes are not in events: a rebuilt database has identities, keys and
memberships.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

import asyncpg
from aiokafka import AIOKafkaProducer

from medledger.identity import codec, domain, store
from medledger.runtime.consumer import Opened
from medledger.runtime.envelope import EnvelopeVerifier, EventSigner
from medledger.runtime.errors import InvalidArgument
from medledger.runtime.outbox import Conn, Outbox, OutboxRelay

log = logging.getLogger(__name__)

RELAY_LOCK = 0x6964656E  # "iden"


def identity_outbox(topic: str, signer: EventSigner) -> Outbox:
    return Outbox(topic, signer, store.OUTBOX_CHANNEL)


def identity_relay(
    outbox: Outbox,
    database_url: str,
    producer: AIOKafkaProducer,
    bootstrap: str,
    verifier: EnvelopeVerifier,
    on_lead: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
    standby_poll_s: float = 0.5,
) -> OutboxRelay:
    return OutboxRelay(
        outbox, database_url, producer, bootstrap, verifier, RELAY_LOCK,
        apply=apply_from_topic, known_positions=store.applied_positions, on_lead=on_lead,
        standby_poll_s=standby_poll_s, name="identity outbox relay",
    )


async def apply_from_topic(conn: Conn, opened: Opened) -> int:
    """Fold one verified record the database has not seen into the projection."""
    env, where = opened.envelope, opened.delivery
    if not await store.mark_applied(conn, env.event_id, where.topic, where.partition, where.offset):
        return 0
    try:
        event = codec.from_envelope(env)
        if event is None:
            log.warning("skipped an event type this version does not know", extra={"event_type": env.event_type})
            return 0
        state = await store.load(conn, domain.aggregate_of(event), lock=True)
        await store.save(conn, domain.evolve(state, event))
    except (domain.InconsistentEvent, InvalidArgument) as exc:
        log.error("event does not follow the projection; skipped", extra={"event_id": env.event_id, "error": str(exc)})
        return 0
    return 1
