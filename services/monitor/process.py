"""`medledger serve monitor`: the access monitor's process.

Not a ServiceHost service: it owns no database and serves no API. It serves
gRPC health and reflection (probes, `medledger health monitor`) and /metrics
like every service, signs alerts with its own event key, and runs the faust app
(streams.py) in the same event loop. Health is NOT_SERVING until Kafka answers,
every topic it needs exists and faust has started, and again while Kafka is
unreachable. If the faust app crashes the process exits, so the orchestrator
restarts it and faust recovers the tables from their changelogs.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time

import grpc
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from medledger.monitor import metrics as monitor_metrics
from medledger.monitor.alerts import alert_envelope
from medledger.monitor.rules import Firing
from medledger.monitor.settings import MonitorSettings
from medledger.monitor.stall import StallWatch
from medledger.monitor.streams import MonitorStreams
from medledger.runtime import metrics
from medledger.runtime.envelope import EnvelopeVerifier, EventSigner
from medledger.runtime.errors import DependencyUnavailable
from medledger.runtime.grpc_server import GrpcServer
from medledger.runtime.host import stop_on_signals
from medledger.runtime.kafka import kafka_reachable, make_consumer, make_producer, publish, start_producer
from medledger.runtime.metrics import ConsumerLag, Every
from medledger.runtime.retry import with_backoff
from medledger.runtime.settings import event_signer, event_verifier
from medledger.runtime.transport import GrpcTls, kafka_security

log = logging.getLogger(__name__)
# The monitor's consumer lag, as medledger_kafka_consumer_lag_records{reader="access monitor"}.
LAG_READER = "access monitor"
LAG_EVERY_S = 5.0
# No committed progress for this long on a partition with events waiting: a stalled replica (stall.py).
STALL_S = 20.0


class MonitorProcess:
    """The monitor's lifecycle: health, metrics, the alert producer and faust."""

    standalone = True  # `medledger serve` runs it as is (services/cli.py)

    def __init__(
        self,
        settings: MonitorSettings,
        signer: EventSigner,
        verifier: EnvelopeVerifier,
        credentials: grpc.ServerCredentials | None = None,
        health_interval_s: float = 1.0,
    ) -> None:
        self.settings = settings
        self.signer = signer
        self.verifier = verifier
        self.credentials = credentials
        self.health_interval_s = health_interval_s
        self.stop_event = asyncio.Event()
        self.failed = False
        self._producer: AIOKafkaProducer | None = None

    @classmethod
    def from_env(cls) -> MonitorProcess:
        settings = MonitorSettings.from_env()
        tls = GrpcTls.from_env()
        return cls(settings, event_signer("monitor"), event_verifier(settings.topics), tls.server_credentials(settings.grpc_host))

    @property
    def log_level(self) -> str:
        return self.settings.log_level

    async def publish(self, firing: Firing) -> str:
        """Sign and publish a firing's alert; return once acknowledged. Retries
        until Kafka takes it: counting waits meanwhile, so nothing after an
        unpublished alert is recorded (its offset is not committed either)."""
        envelope = alert_envelope(firing)
        while True:
            assert self._producer is not None
            try:
                await publish(self._producer, self.settings.topics.access_alerts, self.signer, envelope)
                return envelope.event_id
            except KafkaError as exc:
                log.error("could not publish an access alert, retrying", extra={
                    "event_id": envelope.event_id, "error": repr(exc),
                })
                await asyncio.sleep(1.0)

    async def _partitions(self) -> int:
        """The repartition topic's partitions, once every topic faust needs exists
        (DependencyUnavailable, retried, until then)."""
        topics = self.settings.topics
        wanted = [topics.access_events, topics.consent_events, topics.access_alerts, *topics.monitor_internal]
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.settings.kafka_bootstrap, request_timeout_ms=15000, **kafka_security()
        )
        try:
            await admin.start()
            described = {t["topic"]: t for t in await admin.describe_topics(wanted)}
        except (KafkaError, OSError) as exc:
            raise DependencyUnavailable(f"Kafka unavailable: {exc!r}") from exc
        finally:
            await admin.close()
        missing = [t for t in wanted if described.get(t, {}).get("error_code", 1) != 0]
        if missing:
            raise DependencyUnavailable(f"topics {', '.join(missing)} do not exist; run `medledger topics ensure`")
        return len(described[topics.monitor_observations]["partitions"])

    async def _producer_started(self) -> AIOKafkaProducer:
        producer = make_producer(self.settings.kafka_bootstrap)
        await start_producer(producer)
        return producer

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT; exit 1 if the faust app crashed."""
        stop_on_signals(self.stop_event)
        s = self.settings
        if s.log_level.upper() != "DEBUG":  # faust and mode narrate every start, stop and rebalance at INFO
            for name in ("faust", "mode"):
                logging.getLogger(name).setLevel(logging.WARNING)
        endpoint = metrics.serve("monitor", s.grpc_host, s.metrics_port)
        server = GrpcServer(s.grpc_host, s.grpc_port, [], [], (), self.credentials)
        await server.start()
        streams: MonitorStreams | None = None
        try:
            self._producer = await with_backoff("kafka", self._producer_started, self.stop_event)
            partitions = await with_backoff("monitor topics", self._partitions, self.stop_event)
            if self._producer is None or partitions is None:
                return
            streams = MonitorStreams(
                s.kafka_bootstrap, s.topics, partitions, s.rules, s.working_hours, self.verifier, self.publish,
                kafka_security(), s.max_clock_skew_s, str(s.data_dir),
            )
            await streams.start()
            log.info("access monitor started", extra={"rules": ",".join(r.name for r in s.rules)})
            await self._watch(server, streams)
        finally:
            await server.set_serving(False)
            if streams is not None:
                await streams.stop()
            if self._producer is not None:
                await self._producer.stop()
            await server.stop()
            if endpoint is not None:
                endpoint.stop()
        if self.failed:
            sys.exit(1)

    async def _watch(self, server: GrpcServer, streams: MonitorStreams) -> None:
        serving = False
        metrics.SERVING.set_function(lambda: 1.0 if serving else 0.0)
        probe = LagProbe(self.settings.kafka_bootstrap)
        try:
            while not self.stop_event.is_set() and not self.failed:
                if serving:
                    await probe.measure(streams)
                serving = await self._tick(server, streams, serving)
        finally:
            await probe.close()

    async def _tick(self, server: GrpcServer, streams: MonitorStreams, serving: bool) -> bool:
        """One health check; the new serving state."""
        if streams.app.crashed:
            log.error("the faust app crashed; exiting", extra={"error": repr(streams.app.crash_reason)})
            self.failed = True
            return serving
        now = streams.running and await kafka_reachable(self.settings.kafka_bootstrap)
        if now != serving:
            log.info("health changed", extra={"serving": now})
            await server.set_serving(now)
        try:
            await asyncio.wait_for(self.stop_event.wait(), self.health_interval_s)
        except asyncio.TimeoutError:
            pass
        return now


class LagProbe:
    """Measures the monitor's consumer lag every LAG_EVERY_S, best effort: a failed
    measurement leaves the last figures and is retried at the next interval. Any
    error is caught: faust's assignment may be mid-rebalance, and a metric must
    never stop the monitor. From the same figures it notices a stalled replica
    (stall.py) and asks the group for a fresh rebalance."""

    def __init__(self, bootstrap: str, stall_s: float = STALL_S) -> None:
        self.lag, self.every = ConsumerLag(LAG_READER), Every(LAG_EVERY_S)
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000, **kafka_security())
        self.offsets: AIOKafkaConsumer = make_consumer(bootstrap, group_id=None)  # offsets only, never records
        self.stalls = StallWatch(stall_s)
        self.started = False

    async def measure(self, streams: MonitorStreams) -> None:
        if not self.every.due():
            return
        try:
            if not self.started:
                await self.admin.start()
                await self.offsets.start()
                self.started = True
            measured = await streams.measure_lag(self.admin, self.offsets, self.lag)
            stuck = self.stalls.stalled(time.monotonic(), measured)
            if stuck:
                log.warning("no progress on partitions with events waiting; asking the group to rebalance", extra={
                    "stalled_s": self.stalls.stall_s, "partitions": ",".join(f"{t}:{p}" for t, p in stuck),
                })
                monitor_metrics.REJOINS.inc()
                streams.rejoin()
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            log.warning("could not measure the monitor's consumer lag", extra={"error": repr(exc)})

    async def close(self) -> None:
        self.lag.forget()
        if self.started:
            await self.offsets.stop()
        await self.admin.close()
