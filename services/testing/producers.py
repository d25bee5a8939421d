"""Event-signing keys for every producing service, as a test or benchmark
stack needs them: one private key per service and the pinned producer-keys
file every consumer reads (docs/architecture.md, Event signing)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from google.protobuf.message import Message

from medledger.runtime.envelope import CONSENT, IDENTITY, MONITOR, RECORDS, EnvelopeVerifier, EventSigner, envelope
from medledger.runtime.envelope import parse_producer_keys, topic_kinds
from medledger.v1 import events_pb2

PRODUCING_SERVICES = (IDENTITY, CONSENT, RECORDS, MONITOR)


class TestProducers:
    """Fresh keys for identity, consent, records and the access monitor."""

    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        self.signers = {service: EventSigner.generate(service) for service in PRODUCING_SERVICES}

    @property
    def keys_text(self) -> str:
        return "".join(s.verifier_key + "\n" for s in self.signers.values())

    def write(self, directory: Path) -> dict[str, str]:
        """Write the key files; the settings that point every service at them."""
        directory.mkdir(parents=True, exist_ok=True)
        env = {}
        for service, signer in self.signers.items():
            path = directory / f"{service}-events.key"
            path.write_text(signer.signer_key + "\n")
            path.chmod(0o600)
            env[f"MEDLEDGER_{service.upper()}_EVENT_KEY_FILE"] = str(path)
        producers = directory / "event-producers.pub"
        producers.write_text(self.keys_text)
        env["MEDLEDGER_EVENT_PRODUCER_KEYS_FILE"] = str(producers)
        return env

    def verifier(self, prefix: str = "") -> EnvelopeVerifier:
        return EnvelopeVerifier(parse_producer_keys(self.keys_text), topic_kinds(prefix))

    def seal(self, env: events_pb2.EventEnvelope, producer: str | None = None) -> bytes:
        """Sign as ``producer`` (default: the envelope's own producer field)."""
        return self.signers[producer or env.producer].seal(env)

    def event(self, payload: Message, producer: str, aggregate_id: str, actor: str = "") -> bytes:
        return self.seal(envelope(payload, aggregate_id=aggregate_id, producer=producer, actor=actor))

    def forgeries(
        self, genuine: events_pb2.EventEnvelope, not_allowed: str, tamper: Callable[[Message], None] | None = None
    ) -> dict[str, bytes]:
        """One forgery of each kind an attacker with write access to Kafka can
        publish, all derived from ``genuine`` (unsigned; its producer is the
        service allowed to publish it; ``not_allowed`` is a producing service
        that is not). ``tamper`` changes a payload in place (default: adds an
        unknown field), for the genuine envelope replayed with a changed
        payload. Each must be applied and sequenced by nobody."""

        def copy(event_id_suffix: str) -> events_pb2.EventEnvelope:
            env = events_pb2.EventEnvelope()
            env.CopyFrom(genuine)
            env.event_id = genuine.event_id + event_id_suffix
            return env

        owner = genuine.producer
        stranger = EventSigner.generate(owner)  # the right name, a key nobody pinned
        by_other = copy("-by-other")
        by_other.producer = not_allowed
        self.signers[not_allowed].sign(by_other)
        impostor = copy("-impostor")  # another service's valid key, claiming to be the owner
        self.signers[not_allowed].sign(impostor)
        impostor.producer = owner
        replayed = copy("")  # a genuine envelope replayed with its payload changed
        self.signers[owner].sign(replayed)
        payload = _unpack(genuine)
        if tamper is None:
            replayed.payload.value = replayed.payload.value + b"\xc0\x3e\x01"
        else:
            tamper(payload)
            replayed.payload.Pack(payload)
        return {
            "wrong key": stranger.seal(copy("-wrong-key")),
            "no signature": copy("-unsigned").SerializeToString(),
            "producer not allowed": by_other.SerializeToString(),
            "key of another service": impostor.SerializeToString(),
            "changed payload": replayed.SerializeToString(),
        }


def _unpack(env: events_pb2.EventEnvelope) -> Message:
    from google.protobuf import symbol_database

    message = symbol_database.Default().GetSymbol(env.event_type)()
    env.payload.Unpack(message)
    return message
