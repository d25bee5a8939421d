"""Kafka adapters shared by the services: topic creation, an idempotent
producer, a consumer helper and a liveness probe.

Producers are idempotent with acks=all (docs/architecture.md, Events); consumers never
auto-commit, because every service records what it consumed in its own
database in the same transaction as its effects (the tracking-row pattern).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from medledger.runtime.errors import DependencyUnavailable
from medledger.runtime.settings import MONITOR_TABLES, Topics, env_int
from medledger.runtime.transport import kafka_security

if TYPE_CHECKING:
    from medledger.runtime.envelope import EventSigner
    from medledger.v1 import events_pb2

log = logging.getLogger(__name__)

FOREVER = "-1"
MAX_RECORD_BYTES = 1024 * 1024 + 64 * 1024  # the ledger rejects >1 MiB; the broker must still deliver it


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]
    replication_factor: int = 1


def replication_factor_setting() -> int:
    """MEDLEDGER_KAFKA_REPLICATION_FACTOR: 1 for the single local broker, 3 on a
    production cluster, so topics a service creates itself are as durable as
    the ones an operator declares."""
    return env_int("MEDLEDGER_KAFKA_REPLICATION_FACTOR", 1)


def topic_specs(topics: Topics, event_partitions: int = 3, replication_factor: int | None = None) -> list[TopicSpec]:
    """Every topic MedLedger uses. Event topics and the ledger's output keep data
    forever: they are the source of truth the audit tool replays from offset 0.
    The ledger's own topics have one partition so their order is the log's order."""
    rf = replication_factor if replication_factor is not None else replication_factor_setting()
    keep = {"retention.ms": FOREVER, "retention.bytes": FOREVER, "max.message.bytes": str(MAX_RECORD_BYTES)}
    specs = [TopicSpec(name, event_partitions, dict(keep), rf) for name in topics.event_topics]
    specs += [
        TopicSpec(topics.ledger_entries, 1, dict(keep, **{"max.message.bytes": str(2 * MAX_RECORD_BYTES)}), rf),
        TopicSpec(topics.ledger_checkpoints, 1, dict(keep), rf),
        TopicSpec(topics.ledger_rejected, 1, dict(keep), rf),
    ]
    return specs + monitor_topic_specs(topics, event_partitions, rf)


DAY_MS = 24 * 3600 * 1000
# How long the access monitor's table changelogs keep a bucket: longer than any
# window or look-back its settings accept (services/monitor/settings.py).
MONITOR_STATE_RETENTION_MS = 32 * DAY_MS
# How long its repartition topic keeps what it has not counted yet: a monitor
# stopped for longer misses those events (docs/architecture.md, Access monitor).
MONITOR_BACKLOG_RETENTION_MS = 7 * DAY_MS


def monitor_topic_specs(topics: Topics, partitions: int, replication_factor: int) -> list[TopicSpec]:
    """faust's internal topics for the access monitor, with the settings faust would
    give them itself: a repartition topic with as many partitions as the changelogs
    (faust co-partitions a table with the stream that updates it), and one compacted
    changelog per table whose windows expire."""
    observations = TopicSpec(
        topics.monitor_observations, partitions,
        {"retention.ms": str(MONITOR_BACKLOG_RETENTION_MS), "max.message.bytes": str(2 * MAX_RECORD_BYTES)},
        replication_factor,
    )
    changelog = {"cleanup.policy": "compact,delete", "retention.ms": str(MONITOR_STATE_RETENTION_MS)}
    return [observations] + [
        TopicSpec(topics.monitor_changelog(table), partitions, dict(changelog), replication_factor)
        for table in MONITOR_TABLES
    ]


async def ensure_topics(bootstrap: str, specs: Iterable[TopicSpec]) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000, **kafka_security())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [s for s in specs if s.name not in existing]
        if not wanted:
            return []
        new = [NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=s.config) for s in wanted]
        try:
            response = await admin.create_topics(new)
        except TopicAlreadyExistsError:
            return []  # another process created them between list and create
        failed = [
            f"{name}: {message or for_code(code).__name__}"
            for name, code, *rest in response.topic_errors
            for message in [rest[0] if rest else ""]
            if code not in (0, TopicAlreadyExistsError.errno)
        ]
        if failed:  # e.g. no Create ACL on a secured cluster: the operator must declare them
            raise DependencyUnavailable("cannot create topics: " + "; ".join(failed))
        return [s.name for s in wanted]
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, names: Iterable[str]) -> None:
    """Delete topics (tests and benchmarks clean up their random ones)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000, **kafka_security())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = [n for n in names if n in existing]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()


def make_producer(bootstrap: str, **overrides: object) -> AIOKafkaProducer:
    """An idempotent producer (enable_idempotence, acks=all) that never loses an
    acknowledged event and never writes one twice on retry.

    No linger by default: outbox relays and the ledger's publisher hand over
    whole batches, and a command waiting for its event's publication would
    wait out every linger. Records still gather while a request is in
    flight. A producer of many single events (consent's decisions) lingers."""
    options: dict[str, object] = dict(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,
        acks="all",
        linger_ms=0,
        max_request_size=2 * MAX_RECORD_BYTES,
        request_timeout_ms=30000,
        **kafka_security(),
    )
    options.update(overrides)
    return AIOKafkaProducer(**options)


def fill_batch(producer: AIOKafkaProducer, pending: list[tuple[bytes | None, bytes]]) -> BatchBuilder:
    """One batch (up to the producer's max_batch_size) of records taken from
    the end of ``pending`` (key, value), for ``send_batch``: whole batches cost
    a tenth of the CPU per record of one ``send()`` each. An empty batch takes
    any one record, so each call takes at least one."""
    batch = producer.create_batch()
    while pending and batch.append(key=pending[-1][0], value=pending[-1][1], timestamp=None) is not None:
        pending.pop()
    return batch


def make_consumer(bootstrap: str, *topics: str, group_id: str | None, **overrides: object) -> AIOKafkaConsumer:
    """A consumer that starts from the earliest offset and never auto-commits:
    callers store positions themselves, atomically with their effects."""
    options: dict[str, object] = dict(
        bootstrap_servers=bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_partition_fetch_bytes=4 * MAX_RECORD_BYTES,
        fetch_max_bytes=16 * 1024 * 1024,
        **kafka_security(),
    )
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


async def kafka_reachable(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when the first bootstrap broker accepts a TCP connection in time.
    Used by health checks; never raises."""
    client_host, _, client_port = bootstrap.split(",")[0].rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(client_host, int(client_port)), timeout)
        writer.close()
        await writer.wait_closed()
        return True
    except (OSError, asyncio.TimeoutError):
        return False


async def start_producer(producer: AIOKafkaProducer) -> None:
    """Start a producer, translating connection failures into a retriable error."""
    try:
        await producer.start()
    except (KafkaError, OSError) as exc:
        try:
            await producer.stop()
        except Exception:  # noqa: BLE001 - cleanup of a half-started client
            pass
        raise DependencyUnavailable(f"Kafka unavailable: {exc}") from exc


async def last_record(bootstrap: str, topic: str, partition: int = 0) -> "ConsumerRecord[bytes, bytes] | None":
    """The newest record of one partition, or None when it is empty. Lets a
    single writer resume publishing exactly after what it last wrote."""
    from aiokafka import TopicPartition

    consumer = make_consumer(bootstrap, group_id=None, isolation_level="read_uncommitted")
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        if end == 0:
            return None
        consumer.seek(tp, end - 1)
        batch = await consumer.getmany(tp, timeout_ms=10000)
        records = batch.get(tp, [])
        if not records:
            raise DependencyUnavailable(f"could not read the last record of {topic}[{partition}]")
        return records[-1]
    finally:
        await consumer.stop()


async def publish(
    producer: AIOKafkaProducer, topic: str, signer: "EventSigner", event: "events_pb2.EventEnvelope"
) -> bytes:
    """Sign one envelope, send it and wait for the broker's acknowledgement
    (acks=all); returns the exact bytes published."""
    value = signer.seal(event)
    await producer.send_and_wait(topic, value, key=event.aggregate_id.encode())
    return value
