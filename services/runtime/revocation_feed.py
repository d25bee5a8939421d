"""identity.events → the RevocationList every service but identity consults
before it accepts a bearer token (runtime/revocations.py says which tokens).

One reader per process, through the PositionedConsumer, in memory from
offset 0 (the list keeps only the last ``MAX_TOKEN_TTL_S`` and a margin, so
the replay is cheap to hold); only envelopes that pass event signing are
applied, so a record forged onto identity.events can neither revoke nor
un-revoke anyone.

Where it reads: in the service's own process, or (``own_process``) in a
child process of its own that verifies and sends only the changes, so a flood
of identity events costs the service's interpreter a pickled tuple per
revocation instead of a fetch, parse and signature check per record. The
ledger reads there: its sequencer is bound by its own GIL, and under overload
the feed's second reading of identity.events took a third of a core of it
(docs/benchmarks.md). The child is spawned fresh (never forked from a process
running gRPC), restarted with the positions already applied when it exits,
and exits itself when the service is gone (its next send finds the pipe
closed, within ``PROBE_INTERVAL_S``).

Freshness: each round notes the time, asks for the log end, reads up to it,
and is then fresh as of that time (``time.monotonic`` in a child: the same
clock in every process of the machine). A token is checked only while the list is
fresh within ``MEDLEDGER_TOKEN_REVOCATION_MAX_STALENESS_S`` (default 5 s):
otherwise the call fails closed with UNAVAILABLE. Until the first catch-up a
call waits up to that bound, so a process just started does not refuse its
first callers.
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import time
from datetime import datetime, timedelta, timezone
from multiprocessing.connection import Connection
from typing import Callable, Mapping, Protocol, Sequence

from google.protobuf.message import DecodeError

from medledger.runtime.auth import MAX_TOKEN_TTL_S
from medledger.runtime.consumer import WAKE_PER_RECORD, PositionedConsumer
from medledger.runtime.envelope import EnvelopeVerifier
from medledger.runtime.errors import DependencyUnavailable, SettingsError
from medledger.runtime.logs import configure_logging, logging_service
from medledger.runtime.positions import Delivery, Position
from medledger.runtime.retry import keep_running, until_stopped
from medledger.runtime.revocations import FOLDED_TYPES, Change, RevocationList, TokenClaims, change_of
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
# A child sends at most this many changes at once, so the service's event
# loop applies a flood in slices of a few milliseconds.
CHANGES_PER_MESSAGE = 1000


class ReadSink(Protocol):
    """Where a reading round's results go: the feed itself, or a pipe to it."""

    def changed(self, changes: Sequence[Change], positions: Mapping[Position, int]) -> None: ...

    def fresh_since(self, probe_at: float) -> None: ...


class RevocationFeed:
    """The process's view of token revocations and how fresh it is."""

    def __init__(
        self, verifier: EnvelopeVerifier, max_staleness_s: float = 5.0, clock: Callable[[], float] = time.monotonic,
        own_process: bool = False,
    ) -> None:
        if max_staleness_s <= 0:
            raise SettingsError("MEDLEDGER_TOKEN_REVOCATION_MAX_STALENESS_S must be positive")
        if own_process and clock is not time.monotonic:
            raise ValueError("a reader in its own process measures freshness with time.monotonic")
        self.verifier = verifier
        self.max_staleness_s = max_staleness_s
        self.clock = clock
        self.own_process = own_process
        self.revocations = RevocationList(timedelta(seconds=MAX_TOKEN_TTL_S + RETENTION_MARGIN_S))
        self.caught_up = asyncio.Event()
        self.fresh_as_of = -math.inf
        self._positions: dict[Position, int] = {}

    @classmethod
    def from_env(
        cls, verifier: EnvelopeVerifier, env: Mapping[str, str] | None = None, own_process: bool = False
    ) -> "RevocationFeed":
        return cls(verifier, env_float("MEDLEDGER_TOKEN_REVOCATION_MAX_STALENESS_S", 5.0, env), own_process=own_process)

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

    # ---- ReadSink: what a reading round reports ----------------------------------

    def changed(self, changes: Sequence[Change], positions: Mapping[Position, int]) -> None:
        for change in changes:
            self.revocations.apply_change(change)
        self._positions.update(positions)

    def fresh_since(self, probe_at: float) -> None:
        self.fresh_as_of = max(self.fresh_as_of, probe_at)
        self.caught_up.set()
        self.revocations.prune(datetime.now(timezone.utc).replace(tzinfo=None))

    # ---- reading -----------------------------------------------------------------

    async def follow(self, bootstrap: str, topic: str, stop: asyncio.Event) -> None:
        """Keep the list current until stop is set (restarting after Kafka
        errors or a child's exit); ``run`` reads until cancelled, so stop cancels it."""
        await until_stopped(keep_running("token revocations", lambda: self.run(bootstrap, topic), stop), stop)

    async def run(self, bootstrap: str, topic: str) -> None:
        """Read identity.events until cancelled or a failure; a restart resumes
        at the positions already applied."""
        if self.own_process:
            await self._run_in_child(bootstrap, topic)
        else:
            await read_revocations(bootstrap, topic, self.verifier, self._positions, self, self.clock)

    async def _run_in_child(self, bootstrap: str, topic: str) -> None:
        loop = asyncio.get_running_loop()
        context = multiprocessing.get_context("spawn")
        receiving, sending = context.Pipe(duplex=False)
        child = context.Process(
            target=_read_in_child, name="medledger-token-revocations", daemon=True,
            args=(bootstrap, topic, self.verifier, dict(self._positions), sending, _child_log_name(), _log_level()),
        )
        await asyncio.to_thread(child.start)
        sending.close()  # the child holds the only writing end: its exit is our EOF
        relay = asyncio.ensure_future(asyncio.to_thread(
            _relay_messages, receiving, lambda message: loop.call_soon_threadsafe(self._receive, message)
        ))
        try:
            await asyncio.shield(relay)
            raise DependencyUnavailable(f"the token revocation reader exited (code {child.exitcode})")
        finally:
            child.kill()
            await asyncio.to_thread(child.join)
            await asyncio.gather(relay, return_exceptions=True)  # ends at EOF once the child is gone
            receiving.close()

    def _receive(self, message: tuple[str, object, object]) -> None:
        kind, first, second = message
        if kind == "changed":
            self.changed(first, second)  # type: ignore[arg-type]
        else:
            self.fresh_since(first)  # type: ignore[arg-type]


async def read_revocations(
    bootstrap: str, topic: str, verifier: EnvelopeVerifier, positions: Mapping[Position, int], sink: ReadSink,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Read identity.events from ``positions`` until cancelled or a Kafka
    error, reporting verified changes and each round's freshness to ``sink``."""
    consumer = PositionedConsumer(bootstrap, [topic], reader="token revocations", **WAKE_PER_RECORD)
    await consumer.start(positions)
    try:
        while True:
            probe_at = clock()
            ends = await consumer.end_offsets()
            while await consumer.behind(ends):
                await _report(consumer, await consumer.fetch(timeout_ms=200, max_records=5000), verifier, sink)
            sink.fresh_since(probe_at)
            await _report(consumer, await consumer.fetch(timeout_ms=int(PROBE_INTERVAL_S * 1000)), verifier, sink)
    finally:
        await consumer.stop()


async def changes_in(
    consumer: PositionedConsumer, deliveries: Sequence[Delivery], verifier: EnvelopeVerifier
) -> list[Change]:
    """The changes the authentic folded events among ``deliveries`` make;
    forgeries are dropped by ``opened``, malformed payloads logged and skipped."""
    changes = []
    for opened in await consumer.opened(deliveries, verifier, types=FOLDED_TYPES):
        try:
            change = change_of(opened.envelope)
        except DecodeError as exc:
            d = opened.delivery
            log.warning("ignored a malformed identity event", extra={
                "topic": d.topic, "partition": d.partition, "offset": d.offset, "error": str(exc)
            })
            continue
        if change is not None:
            changes.append(change)
    return changes


async def _report(
    consumer: PositionedConsumer, deliveries: Sequence[Delivery], verifier: EnvelopeVerifier, sink: ReadSink
) -> None:
    if deliveries:
        sink.changed(await changes_in(consumer, deliveries, verifier), await consumer.positions())


# ---- the child process -------------------------------------------------------------


class _PipeSink:
    """A ReadSink in the child: each report goes to the service as a message."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def changed(self, changes: Sequence[Change], positions: Mapping[Position, int]) -> None:
        for start in range(0, max(len(changes), 1), CHANGES_PER_MESSAGE):
            last = start + CHANGES_PER_MESSAGE >= len(changes)
            self.connection.send(("changed", list(changes[start:start + CHANGES_PER_MESSAGE]), dict(positions) if last else {}))

    def fresh_since(self, probe_at: float) -> None:
        self.connection.send(("fresh", probe_at, None))


def _read_in_child(
    bootstrap: str, topic: str, verifier: EnvelopeVerifier, positions: dict[Position, int],
    connection: Connection, log_name: str, log_level: str,
) -> None:
    """The child's main: read until a failure, or until a send finds the
    service gone (BrokenPipeError), then exit; the service restarts it."""
    configure_logging(log_name, log_level)
    try:
        asyncio.run(read_revocations(bootstrap, topic, verifier, positions, _PipeSink(connection)))
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    except Exception as exc:  # noqa: BLE001 - reported, then the service restarts us with backoff
        log.warning("token revocation reader failed", extra={"error": repr(exc)})
        raise SystemExit(1) from None


def _relay_messages(connection: Connection, deliver: Callable[[tuple[str, object, object]], object]) -> None:
    """On a worker thread in the service: hand each message to the event loop
    until the child's end closes."""
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return
        deliver(message)


def _child_log_name() -> str:
    service = logging_service()
    return f"{service}.revocations" if service else "token-revocations"


def _log_level() -> str:
    return logging.getLevelName(logging.getLogger().getEffectiveLevel())
