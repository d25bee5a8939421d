"""The platform against the real broker and database: envelopes through Kafka,
migrations in PostgreSQL, every service's health and reflection over gRPC."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import asyncpg
import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from medledger.ledger.merkle import leaf_hash
from medledger.runtime.envelope import envelope
import pytest

from medledger.runtime.errors import DependencyUnavailable
from medledger.runtime.kafka import TopicSpec, ensure_topics, make_consumer, make_producer, publish
from medledger.runtime.postgres import apply_migrations, create_pool
from medledger.runtime.settings import Topics
from medledger.v1 import consent_pb2, events_pb2, ledger_pb2
from medledger.testing.stack import BOOTSTRAP, PRODUCERS, ServiceProcess, unique


async def test_a_signed_envelope_round_trips_through_the_real_broker(topics: Topics) -> None:
    payload = consent_pb2.ConsentRevoked(consent_id="c-7", patient_id="patient-123")
    sent = envelope(payload, aggregate_id="patient-123", producer="consent", actor="org-1")
    producer = make_producer(BOOTSTRAP)
    await producer.start()
    try:
        value = await publish(producer, topics.consent_events, PRODUCERS.signers["consent"], sent)
    finally:
        await producer.stop()
    consumer = make_consumer(BOOTSTRAP, topics.consent_events, group_id=None)
    await consumer.start()
    try:
        record = await consumer.getone()
    finally:
        await consumer.stop()
    assert record.key == b"patient-123" and record.value == value
    got = PRODUCERS.verifier(topics.prefix).open(topics.consent_events, record.value)
    assert got == sent and got.event_type == "medledger.v1.ConsentRevoked"
    unpacked = consent_pb2.ConsentRevoked()
    assert got.payload.Unpack(unpacked) and unpacked.consent_id == "c-7"
    assert leaf_hash(record.value) == leaf_hash(sent.SerializeToString())


async def test_migrations_apply_once_and_in_order(database_url: str, tmp_path: Path) -> None:
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE a (id int PRIMARY KEY);")
    (tmp_path / "0002_second.sql").write_text("ALTER TABLE a ADD COLUMN b text;")
    conn = await asyncpg.connect(database_url)
    try:
        assert await apply_migrations(conn, tmp_path) == [1, 2]
        assert await apply_migrations(conn, tmp_path) == []
        await conn.execute("INSERT INTO a (id, b) VALUES (1, 'x')")
        rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
        assert [(r["version"], r["name"]) for r in rows] == [(1, "first"), (2, "second")]
    finally:
        await conn.close()


async def test_a_failing_migration_changes_nothing(database_url: str, tmp_path: Path) -> None:
    (tmp_path / "0001_broken.sql").write_text("CREATE TABLE ok (id int); SELECT no_such_function();")
    conn = await asyncpg.connect(database_url)
    try:
        try:
            await apply_migrations(conn, tmp_path)
        except asyncpg.PostgresError:
            pass
        else:
            raise AssertionError("a broken migration must fail")
        assert await conn.fetchval("SELECT to_regclass('ok')") is None
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == 0
    finally:
        await conn.close()


SERVICES = {
    "identity": "medledger.v1.IdentityService",
    "consent": "medledger.v1.ConsentService",
    "records": "medledger.v1.RecordsService",
    "ledger": "medledger.v1.LedgerService",
}


def _reflected_services(address: str) -> set[str]:
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        return {s.name for reply in replies for s in reply.list_services_response.service}


def test_every_service_is_healthy_and_discoverable(spawn: Callable[..., ServiceProcess]) -> None:
    procs = {name: spawn(name) for name in SERVICES}
    for name, proc in procs.items():
        proc.wait_serving()
        from medledger.testing.stack import health_status

        assert health_status(proc.address, SERVICES[name]) == "SERVING"
        listed = _reflected_services(proc.address)
        assert SERVICES[name] in listed
        assert {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= listed
    every = set().union(*(_reflected_services(p.address) for p in procs.values()))
    assert set(SERVICES.values()) <= every


@pytest.mark.parametrize("service", ["identity", "consent", "records", "ledger"])
def test_sigterm_stops_a_service_cleanly(spawn: Callable[..., ServiceProcess], service: str) -> None:
    """Exit status 0, not the SIGKILL that follows a stop hanging past the
    grace period (the ledger's revocation feed once never ended)."""
    proc = spawn(service).wait_serving()
    assert proc.stop() == 0


async def test_a_topic_the_broker_refuses_to_create_is_an_error_not_silence(stack: None) -> None:
    """A secured cluster without a Create ACL, or an impossible spec, must
    stop the caller with the broker's reason instead of a later 'missing topic'."""
    name = unique("refused")
    with pytest.raises(DependencyUnavailable, match=name):
        await ensure_topics(BOOTSTRAP, [TopicSpec(name, 1, {}, replication_factor=3)])  # one broker here


async def test_a_pooled_connection_comes_back_without_its_open_transaction(database_url: str) -> None:
    """Releases skip asyncpg's reset query; an abandoned transaction must still
    never reach the next borrower (runtime/postgres.py, _keep_session)."""
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS pool_probe (id int)")
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")
            await conn.execute("INSERT INTO pool_probe VALUES (1)")
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM pool_probe") == 0
    finally:
        await pool.close()
