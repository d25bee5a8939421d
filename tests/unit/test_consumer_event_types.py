"""A reader that acts on a few event types verifies only those
(PositionedConsumer.envelopes with ``types``): the token-revocation feed
every service runs reads all of identity.events but folds four types, and
identity's erasure reader reads all of records.events for one. Skipping the
rest before their signatures are checked must never let a forgery count."""

from __future__ import annotations

from typing import Sequence

from medledger.runtime.consumer import PositionedConsumer
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
