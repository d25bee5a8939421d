"""The ledger's C2SP tlog-tiles HTTP read API (``/checkpoint``, ``/tile/<L>/<N>``,
``/tile/entries/<N>``), so transparency-log tools (Tessera's fsck and client,
witnesses, monitors) read MedLedger as they read any tiled log.

Everything is read from the stored log: a hash tile is the stored tile (the
tree is stored as these tiles, tile_tree.py), a bundle a range of entries'
exact bytes. Hash tiles and the checkpoint are public like the gRPC hash-only
reads; entry bundles say who did what to whom, so they need the same token as
GetEntries. Requests beyond ``max_concurrent`` in flight get 503 at once.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Mapping

import asyncpg
from aiohttp import web

from medledger.ledger import store, tlog_tiles
from medledger.ledger.merkle import HASH_SIZE
from medledger.runtime.auth import RevocationCheck, TokenVerifier
from medledger.runtime.errors import DependencyUnavailable, PermissionDenied, SettingsError, Unauthenticated
from medledger.runtime.settings import env_int, env_str
from medledger.runtime.transport import GrpcTls, is_loopback

log = logging.getLogger(__name__)

IMMUTABLE = "public, max-age=31536000, immutable"
# The checkpoint moves with every batch; a partial tile is superseded by its
# full tile (and the spec lets a log delete it then): caches keep them briefly.
CHECKPOINT_CACHE = "public, max-age=2"
PARTIAL_CACHE = "public, max-age=60"


@dataclass(frozen=True)
class TilesSettings:
    host: str = "127.0.0.1"
    port: int = 50080
    # Requests served at once; more are answered 503 instead of queueing.
    max_concurrent: int = 64

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "TilesSettings":
        return cls(
            # Beside gRPC unless told otherwise: one address to expose, one transport rule.
            host=env_str("MEDLEDGER_LEDGER_TILES_HOST", env_str("MEDLEDGER_LEDGER_HOST", "127.0.0.1", env), env),
            port=env_int("MEDLEDGER_LEDGER_TILES_PORT", 50080, env),
            max_concurrent=env_int("MEDLEDGER_LEDGER_TILES_MAX_CONCURRENT", 64, env),
        )


def server_tls(host: str, tls: GrpcTls) -> ssl.SSLContext | None:
    """HTTPS with the gRPC certificate; plaintext only where gRPC may be plaintext."""
    if tls.cert_chain is None or tls.private_key is None:
        if not is_loopback(host) and not tls.allow_plaintext:
            raise SettingsError(
                f"refusing plaintext tlog-tiles HTTP on {host}: set MEDLEDGER_GRPC_TLS_CERT_FILE and "
                "MEDLEDGER_GRPC_TLS_KEY_FILE, or MEDLEDGER_GRPC_ALLOW_PLAINTEXT=true behind a TLS-terminating mesh"
            )
        return None
    import tempfile  # the ssl module loads certificates from files only

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.NamedTemporaryFile() as cert, tempfile.NamedTemporaryFile() as key:
        cert.write(tls.cert_chain)
        key.write(tls.private_key)
        cert.flush()
        key.flush()
        context.load_cert_chain(cert.name, key.name)
    return context


class TilesApi:
    """aiohttp handlers over the ledger's pool."""

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool],
        verifier: TokenVerifier,
        revocations: RevocationCheck,
        bundle_readers: Collection[str],
        max_concurrent: int,
    ) -> None:
        self.pool = pool
        self.verifier = verifier
        self.revocations = revocations
        self.bundle_readers = frozenset(bundle_readers)
        self.slots = asyncio.Semaphore(max_concurrent)

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._bounded])
        app.router.add_get("/checkpoint", self.checkpoint)
        app.router.add_get("/tile/{path:.+}", self.tile)
        return app

    @web.middleware
    async def _bounded(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self.slots.locked():
            return _text(503, "too many concurrent requests; retry shortly", {"Retry-After": "1"})
        async with self.slots:
            try:
                return await handler(request)
            except DependencyUnavailable as exc:
                return _text(503, str(exc), {"Retry-After": "1"})
            except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
                log.warning("tiles read failed: %s", type(exc).__name__)
                return _text(503, "the ledger database is unavailable", {"Retry-After": "1"})

    async def checkpoint(self, request: web.Request) -> web.StreamResponse:
        async with self.pool().acquire() as conn:
            latest = await store.latest_checkpoint(conn)
        if latest is None:
            return _text(404, "no checkpoint signed yet")
        return web.Response(
            body=latest.note, content_type="text/plain", charset="utf-8",
            headers={"Cache-Control": CHECKPOINT_CACHE},
        )

    async def tile(self, request: web.Request) -> web.StreamResponse:
        try:
            want = tlog_tiles.parse_tile_path(request.path)
        except tlog_tiles.TilePathError as exc:
            return _text(400, str(exc))
        if want.entries:
            refused = await self._refuse_bundle(request)
            if refused is not None:
                return refused
        if want.entries:
            rows = await self._bundle_rows(want)
            if len(rows) < want.width:
                return _text(404, "the log does not hold this tile (yet)")
            unloaded = next((i for i, row in enumerate(rows) if row[0] is None), None)
            if unloaded is not None:
                too_long = tlog_tiles.BundleEntryTooLarge(want.first + unloaded, rows[unloaded][1])
                log.error("entry bundle not representable", extra={"index": too_long.index, "size": too_long.size})
                return _text(500, str(too_long))
            body = tlog_tiles.encode_bundle(want.first, [row[0] for row in rows])
        else:
            # The stored tile itself, read from the database (not the proofs'
            # cache): what tools like fsck check is what is stored.
            async with self.pool().acquire() as conn:
                stored = await store.tile_hashes(conn, want.level, want.index)
            if stored is None or len(stored) < want.width * HASH_SIZE:
                return _text(404, "the log does not hold this tile (yet)")
            body = stored[: want.width * HASH_SIZE]
        response = web.Response(
            body=body, content_type="application/octet-stream",
            headers={"Cache-Control": PARTIAL_CACHE if want.partial else IMMUTABLE},
        )
        if want.entries:
            response.enable_compression()  # as the client's Accept-Encoding allows
        return response

    async def _bundle_rows(self, want: tlog_tiles.TileRequest) -> list[asyncpg.Record]:
        """(entry bytes or None, length) per entry of a bundle; fewer than its
        width if the log lacks some. An entry too long for a bundle is never
        loaded, only measured."""
        async with self.pool().acquire() as conn:
            return await conn.fetch(
                "SELECT CASE WHEN length(event) <= $3 THEN event END, length(event) FROM entries"
                " WHERE idx >= $1 AND idx < $2 ORDER BY idx",
                want.first, want.first + want.width, tlog_tiles.MAX_BUNDLED_ENTRY_SIZE,
            )

    async def _refuse_bundle(self, request: web.Request) -> web.Response | None:
        """None when the bearer token may read entries, else the 401/403 answer."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="medledger-ledger"'}
        if scheme.lower() != "bearer" or not token.strip():
            return _text(401, "entry bundles need Authorization: Bearer <token> of a network auditor", challenge)
        try:
            caller = await self.verifier.verify(token.strip(), "ledger")
            await self.revocations.check(caller)
            if caller.role not in self.bundle_readers and caller.kind not in self.bundle_readers:
                raise PermissionDenied(f"a {caller.role} may not read entry bundles")
        except Unauthenticated as exc:
            return _text(401, str(exc), challenge)
        except PermissionDenied as exc:
            return _text(403, str(exc))
        return None


def _text(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=message + "\n", headers={"Cache-Control": "no-store", **(headers or {})})


class TilesServer:
    """Runs TilesApi on its own port inside the ledger's event loop."""

    def __init__(self, api: TilesApi, settings: TilesSettings, tls: ssl.SSLContext | None) -> None:
        self.api = api
        self.settings = settings
        self.tls = tls
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.api.application(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port, ssl_context=self.tls)
        await site.start()
        log.info("tlog-tiles HTTP serving", extra={"host": self.settings.host, "port": self.settings.port})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
