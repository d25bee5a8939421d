"""identity.events → the RevocationList every service but identity consults
before it accepts a bearer token (runtime/revocations.py says which tokens).

One reader per process, through the PositionedConsumer, in memory from
offset 0 (the list keeps only the last ``MAX_TOKEN_TTL_S`` and a margin, so
the replay is cheap to hold); only envelopes that pass event signing are
applied, so a record forged onto identity.events can neither revoke nor
un-revoke anyone.

Freshness: each round notes the time, asks for the log end, reads up to it,
and is then fresh as of that time. A token is checked only while the list is
fresh within ``MEDLEDGER_TOKEN_REVOCATION_MAX_STALENESS_S`` (default 5 s):
otherwise the call fails closed with UNAVAILABLE. Until the first catch-up a
call waits up to that bound, so a process just started does not refuse its
first callers.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from datetime import datetime, timedelta, timezone
from typing import Callable, Mapping, Sequence

from google.protobuf.message import DecodeError

from medledger.runtime.auth import MAX_TOKEN_TTL_S
from medledger.runtime.consumer import WAKE_PER_RECORD, PositionedConsumer
from medledger.runtime.envelope import EnvelopeVerifier
from medledger.runtime.errors import DependencyUnavailable, SettingsError
from medledger.runtime.positions import Delivery, Position
from medledger.runtime.retry import keep_running, until_stopped
from medledger.runtime.revocations import FOLDED_TYPES, RevocationList, TokenClaims
from medledger.runtime.settings import env_float

log = logging.getLogger(__name__)

RETENTION_MARGIN_S = 5 * 60  # clock skew and verification leeway, generously
# How often the feed asks the log end to renew fresh_as_of. Revocations
# themselves are applied as soon as they land (the fetch wakes per record);
# this only bounds how old the freshness measure gets between events, against
# a 5 s default bound. Until 2026-12-02 the ask waited behind the long-polling
# fetch, so 0.25 here meant a probe every 0.25-0.75 s; 1 s keeps the broker's
# idle load at what it was.
PROBE_INTERVAL_S = 1.0


class RevocationFeed:
    """The process's view of token revocations and how fresh it is."""

    def __init__(
        self, verifier: EnvelopeVerifier, max_staleness_s: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_staleness_s <= 0:
            raise SettingsError("MEDLEDGER_TOKEN_REVOCATION_MAX_STALENESS_S must be positive")
        self.verifier = verifier
        self.max_staleness_s = max_staleness_s
        self.clock = clock
        self.revocations = RevocationList(timedelta(seconds=MAX_TOKEN_TTL_S + RETENTION_MARGIN_S))
        self.caught_up = asyncio.Event()
        self.fresh_as_of = -math.inf
        self._positions: dict[Position, int] = {}

    @classmethod
    def from_env(cls, verifier: EnvelopeVerifier, env: Mapping[str, str] | None = None) -> "RevocationFeed":
        return cls(verifier, env_float("MEDLEDGER_TOKEN_REVOCATION_MAX_STALENESS_S", 5.0, env))

    def staleness(self) -> float:
        return self.clock() - self.fresh_as_of

    def fresh(self) -> bool:
        return self.staleness() <= self.max_staleness_s

    async def check(self, claims: TokenClaims) -> None:
        """Raise why a verified token must be refused; UNAVAILABLE while the
        list may be missing a revocation."""
        if not self.caught_up.is_set():
            try:
                await asyncio.wait_for(self.caught_up.wait(), self.max_staleness_s)
            except asyncio.TimeoutError:
                raise DependencyUnavailable("token revocations are not loaded yet; try again") from None
        age = self.staleness()
        if age > self.max_staleness_s:
            raise DependencyUnavailable(f"token revocations are {age:.1f} s old; failing closed, try again")
        error = self.revocations.refusal(claims)
        if error is not None:
            raise error

    async def follow(self, bootstrap: str, topic: str, stop: asyncio.Event) -> None:
        """Keep the list current until stop is set (restarting after Kafka
        errors); ``run`` reads until cancelled, so stop cancels it."""
        await until_stopped(keep_running("token revocations", lambda: self.run(bootstrap, topic), stop), stop)

    async def run(self, bootstrap: str, topic: str) -> None:
        """Read identity.events until cancelled or a Kafka error; a restart
        resumes at the positions already applied."""
        consumer = PositionedConsumer(bootstrap, [topic], reader="token revocations", **WAKE_PER_RECORD)
        await consumer.start(self._positions)
        try:
            while True:
                probe_at = self.clock()
                ends = await consumer.end_offsets()
                while await consumer.behind(ends):
                    await self._apply(consumer, await consumer.fetch(timeout_ms=200, max_records=5000))
                self.fresh_as_of = probe_at
                self.caught_up.set()
                self.revocations.prune(datetime.now(timezone.utc).replace(tzinfo=None))
                await self._apply(consumer, await consumer.fetch(timeout_ms=int(PROBE_INTERVAL_S * 1000)))
        finally:
            await consumer.stop()

    async def _apply(self, consumer: PositionedConsumer, deliveries: Sequence[Delivery]) -> None:
        for opened in await consumer.opened(deliveries, self.verifier, types=FOLDED_TYPES):
            try:
                self.revocations.apply(opened.envelope)
            except DecodeError as exc:
                d = opened.delivery
                log.warning("ignored a malformed identity event", extra={
                    "topic": d.topic, "partition": d.partition, "offset": d.offset, "error": str(exc)
                })
        if deliveries:
            self._positions.update(await consumer.positions())
