"""The access monitor as a faust-streaming app (docs/architecture.md, Access monitor).

    access.events ─┐  route (agent)                          count (agent)
    consent.events ┴─► parse, keep what a rule counts ─► <app>-observations-repartition ─► verify, count
                       frame per subject's partition         (one partition per subject)   in windowed tables,
                                                                                           publish AccessAlerts

The router only reads envelopes to find their subject; the counter verifies
every envelope's producer signature (against the topic its type is published
on, wherever it was read) before anything counts, so neither a forged record
on the event topics nor one written to the repartition topic raises or hides an
alert. The rules are the pure core (rules.py); their state is one faust
windowed table per rule (tumbling buckets of one step, expiring when no window
reads them any more), kept in a changelog topic and recovered from it.

Delivery is at least once: faust commits a source offset only after flushing
what processing it produced. An alert is published and acknowledged (acks=all)
before the table writes that record it, so a crash may replay a firing but never
lose one, and a replayed firing is the identical event (alerts.py).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Awaitable, Callable, Sequence

import faust
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition
from faust.types import EventT, StreamT
from faust.types.windows import WindowRange_from_start
from google.protobuf.message import DecodeError

from medledger.monitor import metrics
from medledger.monitor.frames import Frames, unframe
from medledger.monitor.hours import WorkingHours
from medledger.monitor.observations import (
    SOURCE_TOPIC, from_the_future, observations, occurred_ms, partition_of, subject_of,
)
from medledger.monitor.settings import DEFAULT_MAX_CLOCK_SKEW_S
from medledger.monitor.stall import Measured
from medledger.monitor.rules import Bucket, CountingRule, Firing, Observation, Rule, tally
from medledger.runtime.envelope import EnvelopeVerifier, UnauthenticatedEvent
from medledger.runtime.kafka import MAX_RECORD_BYTES
from medledger.runtime.metrics import ConsumerLag
from medledger.runtime.settings import Topics
from medledger.v1 import events_pb2

log = logging.getLogger(__name__)

# The router forwards what it read at least this often, in batches of at most this many.
ROUTE_BATCH = 2000
ROUTE_WAIT_S = 0.05
SESSION_TIMEOUT_S = 10.0

# Signs and publishes a firing's AccessAlert; returns its event id once acknowledged.
PublishAlert = Callable[[Firing], Awaitable[str]]


def faust_credentials(options: dict[str, Any]) -> faust.auth.Credentials | None:
    """runtime/transport.py's aiokafka options as faust credentials."""
    protocol = str(options.get("security_protocol", "PLAINTEXT"))
    if protocol == "SSL":
        return faust.SSLCredentials(options["ssl_context"])
    if protocol.startswith("SASL_"):
        return faust.SASLCredentials(
            username=str(options["sasl_plain_username"]),
            password=str(options["sasl_plain_password"]),
            ssl_context=options.get("ssl_context"),
            mechanism=str(options["sasl_mechanism"]),
        )
    return None


class MonitorStreams:
    """The faust app, its agents and tables. ``publish`` signs an alert and returns
    once the broker acknowledged it."""

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        partitions: int,
        rules: Sequence[Rule],
        hours: WorkingHours,
        verifier: EnvelopeVerifier,
        publish: PublishAlert,
        kafka_options: dict[str, Any],
        max_clock_skew_s: int = DEFAULT_MAX_CLOCK_SKEW_S,
        data_dir: str | None = None,
    ) -> None:
        self.partitions = partitions
        self.max_skew_ms = max_clock_skew_s * 1000
        self.rules = tuple(rules)
        self.hours = hours
        self.verifier = verifier
        self.publish = publish
        self.source_topics = {t: topics.prefix + t for t in set(SOURCE_TOPIC.values())}
        self.group_id = topics.monitor_app_id
        # What the group commits offsets on (the tables' changelogs are read, never committed).
        self.committed_topics = frozenset({*self.source_topics.values(), topics.monitor_observations})
        self.app = faust.App(
            topics.monitor_app_id,
            broker=[f"kafka://{server}" for server in bootstrap.split(",")],
            broker_credentials=faust_credentials(kafka_options),
            store="memory://",
            datadir=data_dir or f"{topics.monitor_app_id}-data",  # faust's default unless given
            # The broker never auto-creates topics, and faust must not try: every
            # topic is declared in runtime/kafka.py (topic_specs) and the KafkaTopics.
            topic_allow_declare=False,
            topic_disable_leader=True,
            topic_partitions=partitions,
            web_enabled=False,
            autodiscover=False,
            key_serializer="raw",
            value_serializer="raw",
            consumer_auto_offset_reset="earliest",
            consumer_max_fetch_size=4 * MAX_RECORD_BYTES,
            producer_max_request_size=4 * MAX_RECORD_BYTES,
            producer_acks=-1,
            processing_guarantee="at_least_once",
            # A monitor that crashed holds its partitions until its session expires:
            # short, so a restarted or standby replica takes over within seconds.
            broker_session_timeout=SESSION_TIMEOUT_S,
            broker_heartbeat_interval=SESSION_TIMEOUT_S / 4,
        )
        source = self.app.topic(topics.access_events, topics.consent_events, key_type=bytes, value_type=bytes)
        self.observations_topic = self.app.topic(
            topics.monitor_observations, key_type=bytes, value_type=bytes, partitions=partitions, internal=True
        )
        self._steps: dict[str, float] = {}
        self.tables = {rule.name: self._table(rule) for rule in self.rules}
        self.app.agent(source, name="route")(self._route_stream)
        self.app.agent(self.observations_topic, name="count")(self._count_stream)
        metrics.declare(rule.name for rule in self.rules)

    def _table(self, rule: Rule) -> Any:
        """The rule's buckets: a tumbling windowed table. The core names the bucket
        (by event time, not the Kafka record's timestamp), so it is read and written
        by its windowed key, (subject, window range), as faust stores it; faust
        still writes the changelog and expires old buckets."""
        step = rule.windows.step_s if isinstance(rule, CountingRule) else rule.bucket_s
        table = self.app.Table(  # keys and values in JSON (no key or value type)
            rule.name, default=list, partitions=self.partitions, help=f"the {rule.name} rule's buckets",
        )
        table.tumbling(step, expires=rule.reach_s)
        self._steps[rule.name] = float(step)
        return table

    # ---- route: event topics -> repartition topic ------------------------------------------------

    async def _route_stream(self, stream: StreamT) -> None:
        async for values in stream.take(ROUTE_BATCH, within=ROUTE_WAIT_S):
            await self.route(values)

    async def route(self, values: Sequence[bytes]) -> None:
        """Forward each envelope a rule counts to its subject's partition."""
        frames = Frames()
        for value in values:
            try:
                subject = subject_of(events_pb2.EventEnvelope.FromString(value))
            except DecodeError:
                continue  # not an envelope: no rule counts it (the ledger rejects it)
            if subject:
                frames.add(partition_of(subject, self.partitions), value)
        for partition, frame in frames.drain():
            await self.observations_topic.send(value=frame, partition=partition)

    # ---- count: repartition topic -> tables and alerts ---------------------------------------------

    async def _count_stream(self, stream: StreamT) -> None:
        async for event in stream.events():
            await self.count(event)

    def _verified(self, value: bytes) -> events_pb2.EventEnvelope | None:
        try:
            env = events_pb2.EventEnvelope.FromString(value)
            topic = self.source_topics.get(SOURCE_TOPIC.get(env.event_type, ""), "")
            self.verifier.check(topic, env)
        except (DecodeError, UnauthenticatedEvent) as exc:
            metrics.UNAUTHENTICATED.inc()
            log.warning("ignored an unauthenticated event", extra={"reason": str(exc)[:200]})
            return None
        return env

    def _observed(self, partition: int, frame: bytes, received_ms: int) -> list[tuple[str, Observation]]:
        """What the rules count of one frame; ``received_ms`` is when the router
        forwarded it (the repartition record's timestamp: the same on a replay)."""
        counted: list[tuple[str, Observation]] = []
        try:
            values = list(unframe(frame))
        except ValueError as exc:
            log.warning("ignored a malformed frame", extra={"partition": partition, "reason": str(exc)})
            return counted
        for value in values:
            env = self._verified(value)
            if env is None:
                continue
            if from_the_future(env, received_ms, self.max_skew_ms):
                metrics.FROM_THE_FUTURE.inc()
                log.warning("dropped an event dated beyond the allowed clock skew", extra={
                    "event_id": env.event_id, "producer": env.producer, "ahead_s": (occurred_ms(env) - received_ms) // 1000,
                })
                continue
            for rule, observation in observations(env, self.hours):
                # A subject lives on one partition; anything else was not routed by us.
                if partition_of(observation.subject, self.partitions) == partition:
                    counted.append((rule, observation))
            metrics.COUNTED.inc()
        return counted

    def _key(self, rule: str, subject: str, start: int) -> tuple[str, tuple[float, float]]:
        return subject, WindowRange_from_start(float(start), self._steps[rule])

    def _read(self, rule: str, subject: str, start: int) -> Bucket:
        return Bucket.from_json(self.tables[rule][self._key(rule, subject, start)])

    async def count(self, event: EventT) -> None:
        """Count one frame: verify, count, publish what fired (acknowledged), then
        record the buckets, alert marks first (rules.StagedBuckets)."""
        message = event.message
        received_ms = int(message.timestamp * 1000) if message.timestamp else int(time.time() * 1000)
        result = tally(self.rules, self._observed(message.partition, event.value, received_ms), self._read)
        for firing in result.firings:
            event_id = await self.publish(firing)
            metrics.ALERTS.labels(firing.rule).inc()
            log.info("access alert published", extra={"rule": firing.rule, "event_id": event_id})
        for rule, writes in result.writes.items():
            table = self.tables[rule]
            for subject, start, bucket in writes:
                table[self._key(rule, subject, start)] = bucket.to_json()

    # ---- lag -------------------------------------------------------------------------------------

    async def measure_lag(
        self, admin: AIOKafkaAdminClient, offsets: AIOKafkaConsumer, lag: ConsumerLag
    ) -> list[Measured]:
        """The group's lag on this replica's partitions: log end minus the committed
        offset (the earliest offset before the first commit). Committed, not fetched:
        faust fetches ahead, and a counter stuck on a publish still fetches. Offsets
        come from a consumer of our own (``offsets``, no group): asking faust's
        consumer for them stalled its fetching (live alerts 5-20 s late, measured
        with deploy/bench_monitor.py). Returns what it measured, for StallWatch."""
        tps = sorted(
            TopicPartition(tp.topic, tp.partition)
            for tp in self.app.consumer.assignment() if tp.topic in self.committed_topics
        )
        if not tps:
            lag.forget()
            return []
        ends = await offsets.end_offsets(tps)
        earliest = await offsets.beginning_offsets(tps)
        committed = await admin.list_consumer_group_offsets(self.group_id, partitions=tps)
        measured: list[Measured] = []
        for tp in tps:
            done = committed.get(tp)
            position = done.offset if done is not None and done.offset >= 0 else earliest.get(tp, 0)
            measured.append((tp.topic, tp.partition, ends.get(tp, position), position))
        lag.forget()  # partitions move between replicas: report only this one's
        for topic, partition, end, position in measured:
            lag.observe(topic, partition, end, position)
        return measured

    def rejoin(self) -> None:
        """Ask the consumer group for a fresh rebalance: what clears faust's
        post-rebalance stall (stall.py). aiokafka has no public call for it; its
        group coordinator's request_rejoin is what a failed heartbeat uses."""
        self.app.consumer._thread._ensure_consumer()._coordinator.request_rejoin()  # type: ignore[attr-defined]

    # ---- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.app.start()

    async def stop(self) -> None:
        await self.app.stop()

    @property
    def running(self) -> bool:
        return bool(self.app.started and not self.app.crashed and not self.app.should_stop)

