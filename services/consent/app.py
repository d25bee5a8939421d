"""Wires the consent service into the shared host: the ConsentService servicer
behind the AuthInterceptor, the stream processor feeding this replica's
decision projection, the access-decision log, and housekeeping (expiry, the
consents table) on the one replica holding the housekeeping lock.

Ready (SERVING) only while the projection is within the staleness bound, so
a load balancer stops sending decisions to a replica that fell behind.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path
from typing import Awaitable, Callable, Sequence

import asyncpg
import grpc
from aiokafka import AIOKafkaProducer

from medledger.consent import metrics, store
from medledger.consent.api import ALLOWED_KINDS, ConsentApi
from medledger.consent.commands import ConsentCommands, Ports
from medledger.consent.decision_log import DecisionLog
from medledger.consent.identity import IdentityDirectory, IdentityServiceDirectory
from medledger.consent.mirror import ConsentMirror
from medledger.consent.projection import Projection
from medledger.consent.settings import ConsentSettings
from medledger.consent.stream import ConsentStream
from medledger.runtime.token_cache import caching_verifier, preload_keys
from medledger.runtime.auth import AuthInterceptor
from medledger.runtime.errors import DependencyUnavailable, SettingsError
from medledger.runtime.background import BackgroundTasks
from medledger.runtime.grpc_server import Registration, full_service_name
from medledger.runtime.host import ServiceContext
from medledger.runtime.identity_client import IdentityClient, ServiceCredentials
from medledger.runtime.kafka import ensure_topics, topic_specs
from medledger.runtime.outbox import Outbox, OutboxRelay
from medledger.runtime.retry import keep_running, with_backoff
from medledger.runtime.revocation_feed import RevocationFeed
from medledger.runtime.settings import DEFAULT_PORTS, CommonSettings
from medledger.v1 import consent_pb2, consent_pb2_grpc

log = logging.getLogger(__name__)

RELAY_LOCK = 0x636F6F78  # "coox": the consent outbox relay
OUTBOX_CHANNEL = "consent_outbox"


class ConsentApp:
    name = "consent"
    service_names = [full_service_name(consent_pb2, "ConsentService")]
    migrations = Path(__file__).parent / "migrations"
    # CheckAccess hands the producer one AccessDecided each: 2 ms of linger
    # lets a burst of decisions share a request (decision_log.py)
    producer_options = {"linger_ms": 2}

    def __init__(self, settings: ConsentSettings, common: CommonSettings) -> None:
        self.settings = settings
        self.common = common
        self.ctx: ServiceContext | None = None
        self.projection = Projection()
        self.stream = ConsentStream(
            common.kafka_bootstrap, common.topics, self.projection, settings.freshness_probe_s, settings.events
        )
        self.decision_log = DecisionLog(
            self._producer, common.topics.access_events, settings.event_signer, settings.max_unrecorded_decisions
        )
        self.outbox = Outbox(common.topics.consent_events, settings.event_signer, OUTBOX_CHANNEL)
        self.relay: OutboxRelay | None = None
        self.commands = ConsentCommands(
            settings, common.topics.consent_events, self.projection, self.stream,
            Ports(self._pool, self._identity, self.outbox, self._relay),
        )
        self.mirror = ConsentMirror(common.kafka_bootstrap, common.topics.consent_events, self._pool, settings.events)
        self.verifier = caching_verifier(settings.identity_address)
        self.revocations = RevocationFeed.from_env(settings.events)  # tokens revoked since issue
        self.client: IdentityClient | None = None
        self.directory: IdentityDirectory | None = None
        self.leader = False
        self.background = BackgroundTasks()
        self._stop = self.background.stop
        metrics.watch_replica(
            self.stream.staleness, settings.max_staleness_s, lambda: self.decision_log.unrecorded,
            lambda: self.projection.consent_count,
        )
        # The review gauges cost a count over break_glass: every fifth
        # housekeeping pass (5 s with the default 1 s interval).
        metrics.BREAK_GLASS_REVIEW.led_by(lambda: self.leader, every_s=settings.expiry_interval_s * 5)

    @classmethod
    def from_env(cls) -> "ConsentApp":
        return cls(ConsentSettings.from_env(), CommonSettings.from_env("consent", DEFAULT_PORTS["consent"]))

    def _producer(self) -> AIOKafkaProducer:
        if self.ctx is None:
            raise DependencyUnavailable("service is starting: Kafka not connected yet")
        return self.ctx.producer

    def _relay(self) -> OutboxRelay:
        if self.relay is None:
            raise DependencyUnavailable("service is starting: the outbox relay is not running yet")
        return self.relay

    def _pool(self) -> asyncpg.Pool:
        if self.ctx is None:
            raise DependencyUnavailable("service is starting: PostgreSQL not connected yet")
        return self.ctx.pool

    def _identity(self) -> IdentityDirectory:
        if self.directory is None:
            if self.settings.service_key is None:
                raise DependencyUnavailable(
                    "the consent service has no identity credentials: set MEDLEDGER_CONSENT_IDENTITY_ID "
                    "and MEDLEDGER_CONSENT_KEY_FILE"
                )
            raise DependencyUnavailable("service is starting: identity client not ready")
        return self.directory

    def registrations(self) -> Sequence[Registration]:
        api = ConsentApi(
            self.commands, self.projection, self.stream, self.decision_log, self._pool, self.settings.max_staleness_s
        )

        def register(server: grpc.aio.Server) -> None:
            consent_pb2_grpc.add_ConsentServiceServicer_to_server(api, server)

        return [register]

    def interceptors(self) -> Sequence[grpc.aio.ServerInterceptor]:
        return [AuthInterceptor(self.verifier, (), ALLOWED_KINDS, audience="consent", revocations=self.revocations)]

    def _spawn(self, what: str, job: Callable[[], Awaitable[None]]) -> None:
        self.background.start(keep_running(what, job, self._stop))

    async def on_ready(self, ctx: ServiceContext) -> None:
        await self._check_sealed_texts(ctx.pool)
        s = ctx.settings
        mine = (s.topics.consent_events, s.topics.access_events)  # what it writes; readers need not create
        await ensure_topics(s.kafka_bootstrap, [t for t in topic_specs(s.topics) if t.name in mine])
        if self.settings.service_key is None:
            log.warning("no identity credentials: GrantConsent and representatives answer UNAVAILABLE; set "
                        "MEDLEDGER_CONSENT_IDENTITY_ID and MEDLEDGER_CONSENT_KEY_FILE")
        else:
            credentials = ServiceCredentials(
                self.settings.identity_address, self.settings.service_identity_id, self.settings.service_key,
                audience=("identity",),
            )
            self.client = IdentityClient(self.settings.identity_address, credentials)
            self.directory = IdentityServiceDirectory(self.client)
        self.ctx = ctx
        self.relay = OutboxRelay(
            self.outbox, s.database_url, ctx.producer, s.kafka_bootstrap, self.settings.events, RELAY_LOCK,
            name="consent outbox relay",
        )
        self.background.start(self.relay.run(self._stop))
        self.background.start(self.revocations.follow(s.kafka_bootstrap, s.topics.identity_events, self._stop))
        self._spawn("consent projection", self.stream.run)
        self._spawn("access decision log", self.decision_log.run)
        self._spawn("housekeeping", self._housekeeping)
        self.background.start(self._preload_token_keys())
        self.background.start(self._freeze_when_loaded())

    async def _check_sealed_texts(self, pool: asyncpg.Pool) -> None:
        """Stop if the data key is not the one this database's texts were
        sealed with; seal any justification still stored in plaintext."""
        sealer = self.commands.sealer
        async with pool.acquire() as conn:
            recorded = await store.check_data_key(conn, sealer.kek_id)
            if recorded != sealer.kek_id:
                raise SettingsError(
                    f"the consent data key ({sealer.kek_id}) is not the one this database was sealed with "
                    f"({recorded}); set MEDLEDGER_CONSENT_DATA_KEY_FILE to the original key"
                )
            sealed = await store.seal_plaintext_justifications(conn, sealer)
        if sealed:
            log.info("sealed break-glass justifications stored in plaintext", extra={"count": sealed})

    async def _preload_token_keys(self) -> None:
        await with_backoff("token keys", lambda: preload_keys(self.verifier, self.settings.identity_address), self._stop)

    async def _freeze_when_loaded(self) -> None:
        """Once the projection is loaded, move it out of the garbage collector's
        sight: a full collection over 100,000s of consents would pause
        decisions for tens of milliseconds."""
        await self.stream.caught_up.wait()
        gc.collect()
        gc.freeze()

    async def _housekeeping(self) -> None:
        """Wait for the housekeeping lock; while holding it, keep the consents
        table in step and publish expiries."""
        async with self._pool().acquire() as conn:
            while not await store.try_lead(conn):
                await self._pause(self.settings.expiry_interval_s * 5)
            self.leader = True
            mirror = asyncio.create_task(keep_running("consent mirror", self.mirror.run, self._stop))
            try:
                await self.stream.caught_up.wait()
                while not self._stop.is_set():
                    await self.commands.expire_due()
                    await metrics.BREAK_GLASS_REVIEW.refresh(conn)
                    await self._pause(self.settings.expiry_interval_s)
            finally:
                self.leader = False
                mirror.cancel()
                await asyncio.gather(mirror, return_exceptions=True)

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def on_stop(self) -> None:
        self._stop.set()
        await self.decision_log.drain(5.0)
        await self.background.close(cancel=True)
        if self.client is not None:
            await self.client.close()
        self.ctx = None

    def ready(self) -> bool:
        return (
            self.ctx is not None and self.stream.staleness() <= self.settings.max_staleness_s
            and self.revocations.fresh()
        )
