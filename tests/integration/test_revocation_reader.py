"""The token-revocation feed reading identity.events in a process of its own
(the ledger's way), against the real broker: it applies exactly the revocations
that verify, is restarted where it stopped when its reader dies, and leaves no
reader behind when the service stops or is killed."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone

import pytest

from medledger.runtime.auth import Caller
from medledger.runtime.envelope import envelope
from medledger.runtime.errors import PermissionDenied, Unauthenticated
from medledger.runtime.kafka import make_producer
from medledger.runtime.revocation_feed import RevocationFeed
from medledger.runtime.settings import Topics
from medledger.testing.stack import BOOTSTRAP, PRODUCERS
from medledger.v1 import identity_pb2

pytestmark = pytest.mark.timeout(120)


def _caller(subject: str, key_id: str = "k1") -> Caller:
    issued = int(time.time()) - 60
    return Caller(subject, "PRACTITIONER", ("org-a",), audience=("ledger",), issued_at=issued, key_id=key_id)


async def _publish(topic: str, *values: bytes) -> None:
    producer = make_producer(BOOTSTRAP)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


def _revocation(payload: identity_pb2.IdentityRevoked | identity_pb2.KeyRevoked, subject: str) -> bytes:
    return PRODUCERS.seal(envelope(payload, aggregate_id=subject, producer="identity",
                                   occurred_at=datetime.now(timezone.utc)))


async def _until(condition, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def _readers() -> list[multiprocessing.process.BaseProcess]:
    return [p for p in multiprocessing.active_children() if p.name == "medledger-token-revocations"]


async def test_a_reader_of_its_own_applies_only_genuine_revocations_and_is_restarted_where_it_stopped(
    topics: Topics,
) -> None:
    topic = topics.identity_events
    genuine = envelope(identity_pb2.IdentityRevoked(identity_id="doc-1"), aggregate_id="doc-1", producer="identity",
                       occurred_at=datetime.now(timezone.utc))
    forged = list(PRODUCERS.forgeries(genuine, "consent").values())
    await _publish(topic, *forged)  # every way to forge it, with write access to Kafka
    feed = RevocationFeed(PRODUCERS.verifier(topics.prefix), max_staleness_s=5, own_process=True)
    stop = asyncio.Event()
    following = asyncio.ensure_future(feed.follow(BOOTSTRAP, topic, stop))
    try:
        await asyncio.wait_for(feed.caught_up.wait(), 30)
        await feed.check(_caller("doc-1"))  # forgeries revoke nobody
        assert len(_readers()) == 1

        await _publish(topic, PRODUCERS.seal(genuine))
        await _until(lambda: isinstance(feed.revocations.refusal(_caller("doc-1")), PermissionDenied))
        with pytest.raises(PermissionDenied):
            await feed.check(_caller("doc-1"))

        # The reader dies: the feed starts another at the positions already applied.
        first = _readers()[0]
        os.kill(first.pid, signal.SIGKILL)  # type: ignore[arg-type]
        await _until(lambda: any(p.pid != first.pid for p in _readers()))
        assert sum(feed._positions.values()) == len(forged) + 1  # every record read, over all partitions
        await _publish(topic, _revocation(identity_pb2.KeyRevoked(identity_id="doc-2", key_id="k9"), "doc-2"))
        await _until(lambda: isinstance(feed.revocations.refusal(_caller("doc-2", "k9")), Unauthenticated))
        assert isinstance(feed.revocations.refusal(_caller("doc-1")), PermissionDenied)  # kept across the restart
        await feed.check(_caller("doc-2", "k1"))  # another key of the same identity is fine
    finally:
        stop.set()
        await asyncio.wait_for(following, 30)
    assert _readers() == []  # stopping the service stops its reader


def test_a_reader_whose_service_was_killed_exits_by_itself(topics: Topics) -> None:
    """SIGKILL gives the service no chance to stop its reader; the reader's
    next freshness report finds the pipe closed and it exits."""
    script = textwrap.dedent(f"""
        import asyncio, multiprocessing, sys
        from medledger.runtime.revocation_feed import RevocationFeed
        from medledger.testing.stack import PRODUCERS

        async def main():
            feed = RevocationFeed(PRODUCERS.verifier({topics.prefix!r}), own_process=True)
            following = asyncio.ensure_future(feed.follow({BOOTSTRAP!r}, {topics.identity_events!r}, asyncio.Event()))
            await asyncio.wait_for(feed.caught_up.wait(), 60)
            print(multiprocessing.active_children()[0].pid, flush=True)
            await following

        asyncio.run(main())
    """)
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as service:
        try:
            assert service.stdout is not None
            reader_pid = int(service.stdout.readline())
            assert _alive(reader_pid)
        finally:
            service.kill()
    deadline = time.monotonic() + 20
    while _alive(reader_pid):
        assert time.monotonic() < deadline, "the reader outlived its service"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    """Running (not a zombie awaiting its reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
