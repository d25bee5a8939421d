"""Wires the ledger into the shared host: the sequencer (active or standby),
the follower publisher and the LedgerService reads."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import asyncpg
import grpc

from medledger.ledger.api import LedgerApi
from medledger.ledger.publisher import PRODUCER_OPTIONS, Publisher
from medledger.ledger.sequencer import Sequencer
from medledger.ledger.settings import LedgerSettings
from medledger.ledger.tile_cache import TileCache
from medledger.ledger.tiles import TilesApi, TilesServer, TilesSettings, server_tls
from medledger.ledger.watch import CheckpointFeed
from medledger.runtime.auth import NETWORK_AUDITOR, AuthInterceptor
from medledger.runtime.token_cache import caching_verifier
from medledger.runtime.revocation_feed import RevocationFeed
from medledger.runtime.background import BackgroundTasks
from medledger.runtime.grpc_server import Registration, full_service_name
from medledger.runtime.host import ServiceContext
from medledger.runtime.transport import GrpcTls
from medledger.v1 import ledger_pb2, ledger_pb2_grpc


_SERVICE = "/medledger.v1.LedgerService/"
HASH_ONLY_METHODS = frozenset(
    _SERVICE + m
    for m in (
        "GetCheckpoint", "GetVerifierKey", "GetInclusionProof", "GetInclusionProofByHash",
        "GetConsistencyProof", "WatchCheckpoints", "ListCheckpoints",
    )
)
# Entries say who did what to whom across every organization. Only network
# auditors replay them; a service fetches single entries (alone or in a proof
# bundle) by the id of an event it knows (records proves its own events);
# organization auditors read none (README, Authorization matrix).
ENTRY_READERS: dict[str, frozenset[str]] = {
    _SERVICE + "GetEntries": frozenset({NETWORK_AUDITOR}),
    _SERVICE + "GetEntryPages": frozenset({NETWORK_AUDITOR}),
    _SERVICE + "GetEntryByEventId": frozenset({NETWORK_AUDITOR, "SERVICE"}),
    _SERVICE + "GetProofBundle": frozenset({NETWORK_AUDITOR, "SERVICE"}),
}


class LedgerApp:
    name = "ledger"
    service_names = [full_service_name(ledger_pb2, "LedgerService")]
    migrations = Path(__file__).parent / "migrations"
    producer_options = PRODUCER_OPTIONS  # publisher.py: whole batches

    def __init__(self, settings: LedgerSettings) -> None:
        self.settings = settings
        self.ctx: ServiceContext | None = None
        self.feed = CheckpointFeed(self._pool, settings.max_watchers, settings.watch_poll_s)
        self.sequencer: Sequencer | None = None
        self.background = BackgroundTasks()
        self.revocations = RevocationFeed.from_env(settings.events)  # tokens revoked since issue
        self.tokens = caching_verifier(settings.identity_address)
        self.tiles: TilesServer | None = None  # the tlog-tiles HTTP reads (tiles.py)
        self.tile_cache = TileCache(self._pool, settings.leaf_tile_cache)  # proofs from memory

    @classmethod
    def from_env(cls) -> "LedgerApp":
        return cls(LedgerSettings.from_env())

    def _pool(self) -> asyncpg.Pool:
        if self.ctx is None:
            raise AttributeError("pool")
        return self.ctx.pool

    def registrations(self) -> Sequence[Registration]:
        api = LedgerApi(self.settings, self._pool, self.feed, self.tile_cache)

        def register(server: grpc.aio.Server) -> None:
            ledger_pb2_grpc.add_LedgerServiceServicer_to_server(api, server)

        return [register]

    def interceptors(self) -> Sequence[grpc.aio.ServerInterceptor]:
        """Hash-only reads are public; entries say who did what to whom, so
        only network auditors and, one by one, services read them."""
        return [
            AuthInterceptor(
                self.tokens, HASH_ONLY_METHODS, ENTRY_READERS,
                audience="ledger", revocations=self.revocations,
            )
        ]

    async def on_ready(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        s = ctx.settings
        publisher = Publisher(ctx.pool, ctx.producer, s.kafka_bootstrap, s.topics)
        self.sequencer = Sequencer(
            self.settings, s.database_url, s.kafka_bootstrap, s.topics, publisher, on_commit=self.feed.notify,
            tile_cache=self.tile_cache,
        )
        self.background.start(self.tile_cache.warm())
        self.background.start(self.tile_cache.expand(self.background.stop))
        self.background.start(self.sequencer.run(self.background.stop))
        self.background.start(self.revocations.follow(s.kafka_bootstrap, s.topics.identity_events, self.background.stop))
        tiles = TilesSettings.from_env()
        # Entry bundles are bulk entries: exactly GetEntries' readers.
        api = TilesApi(self._pool, self.tokens, self.revocations, ENTRY_READERS[_SERVICE + "GetEntries"], tiles.max_concurrent)
        self.tiles = TilesServer(api, tiles, server_tls(tiles.host, GrpcTls.from_env()))
        await self.tiles.start()

    async def on_stop(self) -> None:
        if self.tiles is not None:
            await self.tiles.stop()
        await self.feed.close()
        await self.background.close()
        self.ctx = None

    def ready(self) -> bool:
        return self.ctx is not None and self.sequencer is not None and self.sequencer.role in ("leader", "standby")
