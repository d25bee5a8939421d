"""The access-decision log without a broker: failed acknowledgements are
retried with the same event id, a backlog fails closed, drain waits."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import KafkaTimeoutError

from medledger.consent import decision_log
from medledger.consent.decision_log import DecisionLog
from medledger.runtime.envelope import EventSigner
from medledger.runtime.errors import DependencyUnavailable
from medledger.v1 import consent_pb2 as pb
from medledger.v1 import events_pb2


class FakeProducer:
    """send() hands back a future the test resolves."""

    def __init__(self) -> None:
        self.sent: list[tuple[events_pb2.EventEnvelope, asyncio.Future[object]]] = []

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[object]:
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.sent.append((events_pb2.EventEnvelope.FromString(value), future))
        return future


def decided(patient: str = "pat") -> pb.AccessDecided:
    return pb.AccessDecided(requester_id="doc", patient_id=patient, purpose=pb.PURPOSE_TREATMENT,
                            category="Observation", decision=pb.DECISION_ALLOW, asked_by="svc")


def log_with(producer: FakeProducer, limit: int = 10) -> DecisionLog:
    return DecisionLog(lambda: producer, "access.events", EventSigner.generate("consent"), limit)


async def test_a_failed_send_is_retried_with_the_same_event_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decision_log, "RETRY_DELAY_S", 0.0)
    producer = FakeProducer()
    log = log_with(producer)
    retries = asyncio.create_task(log.run())
    event_id = await log.record(decided())
    (first, future) = producer.sent[0]
    assert first.event_id == event_id and first.aggregate_id == "pat" and log.unrecorded == 1
    future.set_exception(KafkaTimeoutError())
    for _ in range(100):
        if len(producer.sent) == 2:
            break
        await asyncio.sleep(0.01)
    again, future = producer.sent[1]
    assert again == first and log.unrecorded == 1
    future.set_result(None)
    await log.drain(1.0)
    assert log.unrecorded == 0 and log.recorded == 1
    retries.cancel()
    await asyncio.gather(retries, return_exceptions=True)


async def test_too_many_unrecorded_decisions_fail_closed() -> None:
    producer = FakeProducer()
    log = log_with(producer, limit=2)
    await log.record(decided())
    await log.record(decided())
    with pytest.raises(DependencyUnavailable, match="failing closed"):
        await log.record(decided())
    assert len(producer.sent) == 2
    producer.sent[0][1].set_result(None)
    await asyncio.sleep(0)
    await log.record(decided())


async def test_kafka_unavailable_means_no_decision() -> None:
    class Down:
        async def send(self, topic: str, value: bytes, key: bytes) -> None:
            raise KafkaTimeoutError()

    log = DecisionLog(lambda: Down(), "access.events", EventSigner.generate("consent"), 10)
    with pytest.raises(DependencyUnavailable):
        await log.record(decided())
    assert log.unrecorded == 0
