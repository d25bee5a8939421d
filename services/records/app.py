"""Wires the records service into the shared host: the RecordsService servicer
behind the AuthInterceptor, the projection of identity.events and
consent.events, and two outbox relays (records.events for writes, erasures
and research registrations; access.events for disclosures).

Ready (SERVING) once the projection has caught up with the topics once, the
token revocation list is fresh, and both relays run (as leader or standby).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import asyncpg
import grpc

from medledger.runtime.token_cache import caching_verifier, preload_keys
from medledger.records.api import ALLOWED_KINDS, RecordsApi
from medledger.records.commands import Ports, RecordsCommands
from medledger.records.disclosures import DisclosureIndexer, DisclosureReads
from medledger.records.peers import ConsentGate, LedgerProver, Prover, missing_credentials
from medledger.records.projection import RecordsProjection
from medledger.records.reads import ReadPorts, RecordsReads
from medledger.records.research import ResearchReads
from medledger.records.resource import MAX_RESOURCE_BYTES
from medledger.records.settings import RecordsSettings
from medledger.runtime.auth import AuthInterceptor
from medledger.runtime.revocation_feed import RevocationFeed
from medledger.runtime.background import BackgroundTasks
from medledger.runtime.errors import DependencyUnavailable
from medledger.runtime.grpc_server import Registration, full_service_name
from medledger.runtime.host import ServiceContext
from medledger.runtime.identity_client import ServiceCredentials
from medledger.runtime.kafka import ensure_topics, topic_specs
from medledger.runtime.outbox import Outbox, OutboxRelay
from medledger.runtime.retry import keep_running, with_backoff
from medledger.runtime.settings import DEFAULT_PORTS, CommonSettings
from medledger.v1 import records_pb2, records_pb2_grpc

log = logging.getLogger(__name__)

RECORDS_RELAY_LOCK = 0x7265636F  # "reco": the records.events outbox relay
# Reads arrive as a steady trickle: gathering 20 ms of disclosures per round
# costs the access topic 20 ms of delay and saves the database, Kafka and the
# ledger a round of work per read (docs/benchmarks.md, records reads).
DISCLOSURE_LINGER_S = 0.02
DISCLOSURE_RELAY_LOCK = 0x72656364  # "recd": the access.events (disclosures) relay
# A request may carry a 4 MiB resource plus its attestation; the service, not
# gRPC, reports the 4 MiB limit (RESOURCE_EXHAUSTED naming it).
MAX_RECEIVE_BYTES = MAX_RESOURCE_BYTES + 1024 * 1024


class RecordsApp:
    name = "records"
    service_names = [full_service_name(records_pb2, "RecordsService")]
    migrations = Path(__file__).parent / "migrations"

    def __init__(self, settings: RecordsSettings, common: CommonSettings) -> None:
        self.settings = settings
        self.common = common
        self.ctx: ServiceContext | None = None
        topics = common.topics
        self.projection = RecordsProjection(common.kafka_bootstrap, topics, settings.events, self._pool)
        self.outbox = Outbox(topics.records_events, settings.event_signer, "records_outbox")
        self.disclosures = Outbox(topics.access_events, settings.event_signer, "records_disclosures",
                                  table="disclosure_outbox")
        self.relay: OutboxRelay | None = None
        self.disclosure_relay: OutboxRelay | None = None
        self.prover: LedgerProver | None = None
        self.gate = ConsentGate(settings.consent_address)
        self.verifier = caching_verifier(settings.identity_address)
        self.revocations = RevocationFeed.from_env(settings.events)  # tokens revoked since issue
        self.commands = RecordsCommands(settings, self.projection, Ports(self._pool, self.outbox, self._relay))
        self.reads = RecordsReads(settings, ReadPorts(self._pool, self.gate, self._prover, self.disclosures))
        self.research = ResearchReads(self._pool, self._prover)
        # ListDisclosures' per-patient index (records/disclosures.py), its own consumer
        self.disclosure_index = DisclosureIndexer(common.kafka_bootstrap, topics, settings.events, self._pool)
        self.disclosure_reads = DisclosureReads(self._pool)
        self.background = BackgroundTasks()
        self.grpc_options = [("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
                             ("grpc.max_send_message_length", settings.max_export_bytes + 1024 * 1024)]

    @classmethod
    def from_env(cls) -> "RecordsApp":
        return cls(RecordsSettings.from_env(), CommonSettings.from_env("records", DEFAULT_PORTS["records"]))

    def _pool(self) -> asyncpg.Pool:
        if self.ctx is None:
            raise DependencyUnavailable("service is starting: PostgreSQL not connected yet")
        return self.ctx.pool

    def _relay(self) -> OutboxRelay:
        if self.relay is None:
            raise DependencyUnavailable("service is starting: the outbox relay is not running yet")
        return self.relay

    def _prover(self) -> Prover:
        if self.prover is None:
            raise missing_credentials()
        return self.prover

    def registrations(self) -> Sequence[Registration]:
        api = RecordsApi(self.commands, self.reads, self.research, self.disclosure_reads)

        def register(server: grpc.aio.Server) -> None:
            records_pb2_grpc.add_RecordsServiceServicer_to_server(api, server)

        return [register]

    def interceptors(self) -> Sequence[grpc.aio.ServerInterceptor]:
        return [AuthInterceptor(self.verifier, (), ALLOWED_KINDS, audience="records", revocations=self.revocations)]

    async def on_ready(self, ctx: ServiceContext) -> None:
        s = ctx.settings
        mine = (s.topics.records_events, s.topics.access_events)
        await ensure_topics(s.kafka_bootstrap, [t for t in topic_specs(s.topics) if t.name in mine])
        if self.settings.service_key is None:
            log.warning("no identity credentials: proofs answer UNAVAILABLE; set "
                        "MEDLEDGER_RECORDS_IDENTITY_ID and MEDLEDGER_RECORDS_KEY_FILE")
        else:
            credentials = ServiceCredentials(
                self.settings.identity_address, self.settings.service_identity_id, self.settings.service_key,
                audience=("ledger",),  # entries for proofs (authors' keys come from the projection)
            )
            self.prover = LedgerProver(self.settings.ledger_address, credentials)
        self.ctx = ctx
        stop = self.background.stop
        self.relay = OutboxRelay(self.outbox, s.database_url, ctx.producer, s.kafka_bootstrap, self.settings.events,
                                 RECORDS_RELAY_LOCK, name="records outbox relay")
        self.disclosure_relay = OutboxRelay(
            self.disclosures, s.database_url, ctx.producer, s.kafka_bootstrap, self.settings.events,
            DISCLOSURE_RELAY_LOCK, name="records disclosure relay",
            # every served read commits one; nothing waits for its publication
            linger_s=DISCLOSURE_LINGER_S,
        )
        self.background.start(self.relay.run(stop))
        self.background.start(self.disclosure_relay.run(stop))
        self.background.start(keep_running("records projection", self.projection.run, stop))
        self.background.start(keep_running("records disclosure index", self.disclosure_index.run, stop))
        self.background.start(self.revocations.follow(s.kafka_bootstrap, s.topics.identity_events, stop))
        self.background.start(with_backoff(
            "token keys", lambda: preload_keys(self.verifier, self.settings.identity_address), stop
        ))

    async def on_stop(self) -> None:
        await self.background.close(cancel=True)
        for closable in (self.prover, self.gate):
            if closable is not None:
                await closable.close()
        self.ctx = None

    def ready(self) -> bool:
        relays = (self.relay, self.disclosure_relay)
        return (
            self.ctx is not None and self.projection.caught_up.is_set() and self.revocations.fresh()
            and all(r is not None and r.role in ("leader", "standby") for r in relays)
        )
