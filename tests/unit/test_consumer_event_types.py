"""A reader that acts on a few event types verifies only those
(PositionedConsumer.envelopes with ``types``): the token-revocation feed
every service runs reads all of identity.events but folds four types, and
identity's erasure reader reads all of records.events for one. Skipping the
rest before their signatures are checked must never let a forgery count."""

from __future__ import annotations

import threading
from typing import Sequence

from medledger.runtime.consumer import VERIFY_OFF_LOOP_AT, PositionedConsumer
from medledger.runtime.envelope import EnvelopeVerifier, UnauthenticatedEvent, envelope, parse_producer_keys
from medledger.runtime.positions import Delivery
from medledger.runtime.revocations import FOLDED_TYPES
from medledger.testing.producers import TestProducers
from medledger.v1 import events_pb2, identity_pb2

PRODUCERS = TestProducers()
TOPIC = "t.identity.events"


class CountingVerifier(EnvelopeVerifier):
    """Records which envelopes had their signatures checked."""

    checked: list[str]

    def check_batch(self, items: Sequence[tuple[str, events_pb2.EventEnvelope]]) -> list[UnauthenticatedEvent | None]:
        self.checked += [env.event_type for _, env in items]
        return super().check_batch(items)


def _signed(payload: identity_pb2.IdentityRevoked | identity_pb2.IdentityRegistered, producer: str = "identity") -> bytes:
    env = envelope(payload, aggregate_id="identity-1", producer="identity")
    PRODUCERS.signers[producer].sign(env)
    return env.SerializeToString()


def test_only_the_wanted_types_are_verified_and_a_forged_one_still_does_not_count() -> None:
    verifier = CountingVerifier(parse_producer_keys(PRODUCERS.keys_text), {TOPIC: "identity.events"})
    verifier.checked = []
    genuine = _signed(identity_pb2.IdentityRevoked(identity_id="identity-1"))
    forged = _signed(identity_pb2.IdentityRevoked(identity_id="identity-2"), producer="consent")  # not identity's key
    registered = _signed(identity_pb2.IdentityRegistered(identity_id="identity-3"))
    values = [registered, forged, b"\xffnot an envelope", genuine, registered]
    deliveries = [Delivery(TOPIC, 0, offset, value) for offset, value in enumerate(values)]

    opened = PositionedConsumer("127.0.0.1:1", [TOPIC]).envelopes(deliveries, verifier, types=FOLDED_TYPES)

    assert [o.delivery.offset for o in opened] == [3]
    assert verifier.checked == ["medledger.v1.IdentityRevoked"] * 2  # the forgery was checked, and refused
    # without the filter every envelope is verified, and the registrations come back too
    verifier.checked = []
    everything = PositionedConsumer("127.0.0.1:1", [TOPIC]).envelopes(deliveries, verifier)
    assert [o.delivery.offset for o in everything] == [0, 3, 4]
    assert len(verifier.checked) == 4


class ThreadNotingVerifier(EnvelopeVerifier):
    """Records the thread each batch's signatures were checked on."""

    threads: list[int]

    def check_batch(self, items: Sequence[tuple[str, events_pb2.EventEnvelope]]) -> list[UnauthenticatedEvent | None]:
        self.threads.append(threading.get_ident())
        return super().check_batch(items)


async def test_a_burst_is_verified_off_the_event_loop_and_a_forgery_in_it_still_does_not_count() -> None:
    """A flood of identity events (or a catch-up after a restart) must not hold
    a service's event loop while thousands of signatures are checked: from
    VERIFY_OFF_LOOP_AT records on, ``opened`` checks them on a worker thread,
    with the same verdicts; a single record is checked in place."""
    verifier = ThreadNotingVerifier(parse_producer_keys(PRODUCERS.keys_text), {TOPIC: "identity.events"})
    verifier.threads = []
    consumer = PositionedConsumer("127.0.0.1:1", [TOPIC])
    values = [_signed(identity_pb2.IdentityRevoked(identity_id=f"identity-{n}")) for n in range(VERIFY_OFF_LOOP_AT)]
    values[5] = _signed(identity_pb2.IdentityRevoked(identity_id="identity-5"), producer="consent")  # forged
    burst = [Delivery(TOPIC, 0, offset, value) for offset, value in enumerate(values)]
    loop_thread = threading.get_ident()

    opened = await consumer.opened(burst, verifier, types=FOLDED_TYPES)

    assert [o.delivery.offset for o in opened] == [n for n in range(VERIFY_OFF_LOOP_AT) if n != 5]
    assert [o.delivery.offset for o in consumer.envelopes(burst, verifier, types=FOLDED_TYPES)] == [
        o.delivery.offset for o in opened
    ]
    assert verifier.threads[0] != loop_thread and verifier.threads[1] == loop_thread
    verifier.threads = []
    single = await consumer.opened(burst[:1], verifier, types=FOLDED_TYPES)
    assert [o.delivery.offset for o in single] == [0] and verifier.threads == [loop_thread]
