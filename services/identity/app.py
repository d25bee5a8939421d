"""Wires the identity service into the shared host: the IdentityService
servicer behind the AuthInterceptor (verifying with the service's own token
keys, no network), the outbox relay, and the bootstrap organization."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Sequence

import asyncpg
import grpc

from medledger.identity import store
from medledger.identity.api import ALLOWED_KINDS, PUBLIC_METHODS, IdentityApi
from medledger.identity.authn import Authenticator
from medledger.identity.erasure import ErasureListener
from medledger.identity.registry import Registry
from medledger.identity.relay import identity_outbox, identity_relay
from medledger.identity.settings import IdentitySettings, bootstrap_identity_id
from medledger.identity.token_check import DatabaseRevocations
from medledger.identity.vault import Vault
from medledger.runtime.auth import AuthInterceptor, TokenVerifier
from medledger.runtime.errors import DependencyUnavailable, SettingsError
from medledger.runtime.background import BackgroundTasks
from medledger.runtime.grpc_server import Registration, full_service_name
from medledger.runtime.host import ServiceContext
from medledger.runtime.kafka import ensure_topics, topic_specs
from medledger.runtime.outbox import OutboxRelay
from medledger.runtime.retry import keep_running
from medledger.runtime.settings import DEFAULT_PORTS, CommonSettings, Topics
from medledger.v1 import identity_pb2, identity_pb2_grpc


class IdentityApp:
    name = "identity"
    service_names = [full_service_name(identity_pb2, "IdentityService")]
    migrations = Path(__file__).parent / "migrations"

    def __init__(self, settings: IdentitySettings, topics: Topics) -> None:
        self.settings = settings
        self.topics = topics
        self.ctx: ServiceContext | None = None
        self.vault = Vault(settings.data_key)
        self.outbox = identity_outbox(topics.identity_events, settings.event_signer)
        self.registry = Registry(
            self._pool, self.outbox, self.vault, self._wait_published, timedelta(seconds=settings.acceptance_max_age_s)
        )
        self.authenticator = Authenticator(
            self._pool, settings.token_keys, settings.token_ttl_s, settings.challenge_ttl_s, settings.challenge_limits
        )
        self.relay: OutboxRelay | None = None
        self.background = BackgroundTasks()

    @classmethod
    def from_env(cls) -> "IdentityApp":
        common = CommonSettings.from_env("identity", DEFAULT_PORTS["identity"])
        return cls(IdentitySettings.from_env(), common.topics)

    def _pool(self) -> asyncpg.Pool:
        if self.ctx is None:
            raise DependencyUnavailable("identity database not connected yet")
        return self.ctx.pool

    async def _wait_published(self, event_ids: Sequence[str]) -> None:
        """Answer only once the events are on identity.events: other services
        act on them from there (records checks authors' keys against its
        projection of that topic), so a key revocation that is committed but
        not yet published is not yet in effect, and the caller must hear so,
        as consent's commands say it (docs/architecture.md, Decisions)."""
        if self.relay is not None and self.ctx is not None:
            if not await self.relay.wait_published(event_ids, self.ctx.pool, self.settings.publish_wait_s):
                raise DependencyUnavailable(
                    "recorded, but Kafka has not accepted it yet; it takes effect once published (do not repeat it)"
                )

    def registrations(self) -> Sequence[Registration]:
        api = IdentityApi(self.registry, self.authenticator)

        def register(server: grpc.aio.Server) -> None:
            identity_pb2_grpc.add_IdentityServiceServicer_to_server(api, server)

        return [register]

    def interceptors(self) -> Sequence[grpc.aio.ServerInterceptor]:
        verifier = TokenVerifier()
        for key_id, raw in self.settings.token_keys.published().items():
            verifier.add_key(key_id, raw)
        return [AuthInterceptor(
            verifier, PUBLIC_METHODS, ALLOWED_KINDS, audience="identity", revocations=DatabaseRevocations(self._pool)
        )]

    async def _on_lead(self, conn: asyncpg.Connection) -> None:
        """Runs on the active relay after it reconciled with the topic, so the
        bootstrap sees every identity the topic already holds."""
        key = self.settings.bootstrap_public_key
        if key is not None:
            await self.registry.bootstrap(conn, key, bootstrap_identity_id(key))

    async def on_ready(self, ctx: ServiceContext) -> None:
        async with ctx.pool.acquire() as conn:
            recorded = await store.check_data_key(conn, self.vault.kek_id)
        if recorded != self.vault.kek_id:
            raise SettingsError(
                f"the identity data key ({self.vault.kek_id}) is not the one this database was sealed with "
                f"({recorded}); set MEDLEDGER_IDENTITY_DATA_KEY_FILE to the original key"
            )
        s = ctx.settings
        await ensure_topics(s.kafka_bootstrap, [t for t in topic_specs(s.topics) if t.name == s.topics.identity_events])
        self.ctx = ctx
        self.relay = identity_relay(
            self.outbox, s.database_url, ctx.producer, s.kafka_bootstrap, self.settings.events, self._on_lead
        )
        self.background.start(self.relay.run(self.background.stop))
        stop = self.background.stop
        self.background.start(keep_running("challenge sweep", lambda: self.authenticator.sweep(stop), stop))
        erasures = ErasureListener(s.kafka_bootstrap, s.topics.records_events, self.settings.events, self._pool)
        self.background.start(keep_running(
            "identity erasures", lambda: erasures.run(self.background.stop), self.background.stop
        ))

    async def on_stop(self) -> None:
        await self.background.close()
        self.ctx = None

    def ready(self) -> bool:
        return self.ctx is not None and self.relay is not None and self.relay.role in ("leader", "standby")
