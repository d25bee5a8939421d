"""Wires the ledger into the shared host: the sequencer (active or standby),
the follower publisher and the LedgerService reads."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import asyncpg
import grpc

from medledger.ledger.api import CheckpointFeed, LedgerApi
from medledger.ledger.publisher import Publisher
from medledger.ledger.sequencer import Sequencer
from medledger.ledger.settings import LedgerSettings
from medledger.runtime.auth import AuthInterceptor
from medledger.runtime.identity_client import make_verifier
from medledger.runtime.background import BackgroundTasks
from medledger.runtime.grpc_server import Registration, full_service_name
from medledger.runtime.host import ServiceContext
from medledger.v1 import ledger_pb2, ledger_pb2_grpc


_SERVICE = "/medledger.v1.LedgerService/"
HASH_ONLY_METHODS = frozenset(
    _SERVICE + m
    for m in (
        "GetCheckpoint", "GetVerifierKey", "GetInclusionProof", "GetInclusionProofByHash",
        "GetConsistencyProof", "WatchCheckpoints",
    )
)
ENTRY_METHODS = frozenset(_SERVICE + m for m in ("GetEntries", "GetEntryPages", "GetEntryByEventId"))
ENTRY_READERS = frozenset({"AUDITOR", "SERVICE"})


class LedgerApp:
    name = "ledger"
    service_names = [full_service_name(ledger_pb2, "LedgerService")]
    migrations = Path(__file__).parent / "migrations"

    def __init__(self, settings: LedgerSettings) -> None:
        self.settings = settings
        self.ctx: ServiceContext | None = None
        self.feed = CheckpointFeed()
        self.sequencer: Sequencer | None = None
        self.background = BackgroundTasks()

    @classmethod
    def from_env(cls) -> "LedgerApp":
        return cls(LedgerSettings.from_env())

    def _pool(self) -> asyncpg.Pool:
        if self.ctx is None:
            raise AttributeError("pool")
        return self.ctx.pool

    def registrations(self) -> Sequence[Registration]:
        api = LedgerApi(self.settings, self._pool, self.feed)

        def register(server: grpc.aio.Server) -> None:
            ledger_pb2_grpc.add_LedgerServiceServicer_to_server(api, server)

        return [register]

    def interceptors(self) -> Sequence[grpc.aio.ServerInterceptor]:
        """Hash-only reads are public; entries say who did what to whom, so
        only auditors and services may read them (tokens from identity)."""
        return [
            AuthInterceptor(make_verifier(self.settings.identity_address), HASH_ONLY_METHODS, {m: ENTRY_READERS for m in ENTRY_METHODS})
        ]

    async def on_ready(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        s = ctx.settings
        publisher = Publisher(ctx.pool, ctx.producer, s.kafka_bootstrap, s.topics)
        self.sequencer = Sequencer(
            self.settings, s.database_url, s.kafka_bootstrap, s.topics, publisher, on_commit=self.feed.notify
        )
        self.background.start(self.sequencer.run(self.background.stop))

    async def on_stop(self) -> None:
        await self.background.close()
        self.ctx = None

    def ready(self) -> bool:
        return self.ctx is not None and self.sequencer is not None and self.sequencer.role in ("leader", "standby")
