"""Recording every access decision as an AccessDecided event on access.events
(docs/architecture.md, Topics: every access decision, allowed or denied, becomes an event).

Decision: CheckAccess answers once the event is handed to the idempotent
producer (acks=all), without waiting for the broker's acknowledgement — a
round trip would cost more than the whole 3 ms latency budget. The producer
batches these events (linger 2 ms). Never silently lost:

- a send whose acknowledgement fails is logged at ERROR with its event id and
  sent again (same event id, so consumers dedupe) until it succeeds;
- while more than ``max_unrecorded`` decisions are unacknowledged (Kafka slow
  or away) CheckAccess fails closed with UNAVAILABLE: no decision is handed
  out that cannot be recorded;
- on shutdown the log drains; anything still unacknowledged is logged at
  ERROR with its event ids.

Why not the transactional outbox the consent commands use: a decision changes
no state, so there is nothing for its event to commit atomically with, and an
outbox row would add a PostgreSQL commit (a WAL flush) and the relay's hop to
every decision — more than the whole latency budget.

What remains is a crash (SIGKILL, power loss) within the few milliseconds
between answering and the acknowledgement; the records service also records
the reads it serves on access.events, so the access itself stays audited.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from medledger.runtime.errors import DependencyUnavailable
from medledger.runtime.envelope import EventSigner, envelope
from medledger.v1 import consent_pb2, events_pb2

log = logging.getLogger(__name__)

RETRY_DELAY_S = 0.5


class DecisionLog:
    def __init__(
        self, producer: Callable[[], AIOKafkaProducer], topic: str, signer: EventSigner, max_unrecorded: int
    ) -> None:
        self._producer = producer
        self.topic = topic
        self.signer = signer
        self.max_unrecorded = max_unrecorded
        self._unacked: dict[str, events_pb2.EventEnvelope] = {}
        self._retries: asyncio.Queue[events_pb2.EventEnvelope] = asyncio.Queue()
        self._drained = asyncio.Event()
        self._drained.set()
        self.recorded = 0

    @property
    def unrecorded(self) -> int:
        return len(self._unacked)

    async def record(self, decided: consent_pb2.AccessDecided) -> str:
        """Hand the decision's event to Kafka; its event id. UNAVAILABLE if too
        many decisions are unacknowledged already."""
        if len(self._unacked) >= self.max_unrecorded:
            raise DependencyUnavailable(
                f"{len(self._unacked)} access decisions are not yet recorded on Kafka; failing closed"
            )
        event = envelope(decided, aggregate_id=decided.patient_id, producer=self.signer.service, actor=decided.requester_id)
        self.signer.sign(event)  # once: a retry sends exactly the same bytes
        try:
            await self._send(event)
        except (KafkaError, DependencyUnavailable) as exc:
            raise DependencyUnavailable(f"cannot record the access decision on Kafka: {exc!r}") from None
        return event.event_id

    async def _send(self, event: events_pb2.EventEnvelope) -> None:
        future = await self._producer().send(self.topic, event.SerializeToString(), key=event.aggregate_id.encode())
        self._unacked[event.event_id] = event
        self._drained.clear()
        future.add_done_callback(lambda done: self._acked(event, done))

    def _acked(self, event: events_pb2.EventEnvelope, done: "asyncio.Future[object]") -> None:
        error = None if done.cancelled() else done.exception()
        if done.cancelled() or error is not None:
            self._failed(event, error)
            return
        if self._unacked.pop(event.event_id, None) is not None:
            self.recorded += 1
        if not self._unacked:
            self._drained.set()

    def _failed(self, event: events_pb2.EventEnvelope, error: BaseException | None) -> None:
        log.error("access decision not recorded yet; retrying", extra={"event_id": event.event_id, "error": repr(error)})
        self._unacked[event.event_id] = event
        self._drained.clear()
        self._retries.put_nowait(event)

    async def run(self) -> None:
        """Send failed decisions again, until cancelled."""
        while True:
            event = await self._retries.get()
            await asyncio.sleep(RETRY_DELAY_S)
            try:
                await self._send(event)
            except (KafkaError, DependencyUnavailable) as exc:
                self._failed(event, exc)

    async def drain(self, timeout: float) -> None:
        """Wait for every decision to be acknowledged; log any that were not."""
        try:
            await asyncio.wait_for(self._drained.wait(), timeout)
        except asyncio.TimeoutError:
            log.error("access decisions left unrecorded at shutdown", extra={
                "count": len(self._unacked), "event_ids": ",".join(sorted(self._unacked)[:100])
            })
