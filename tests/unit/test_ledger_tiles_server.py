"""The tlog-tiles HTTP server (services/ledger/tiles.py) without a database: it is
bounded (beyond its concurrent-request limit it answers 503 at once instead of
queueing) and it follows gRPC's transport rule (HTTPS with the gRPC certificate;
plaintext only on loopback or when explicitly allowed)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from medledger.ledger.tiles import TilesApi, TilesServer, TilesSettings, server_tls
from medledger.runtime.auth import TokenVerifier
from medledger.runtime.errors import SettingsError
from medledger.runtime.transport import GrpcTls
from medledger.testing.stack import free_port
from tests.tls_support import ThrowawayCA


class HeldPool:
    """A pool whose connections are lent only once ``release`` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.waiting = asyncio.Event()

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        self.waiting.set()
        await self.release.wait()
        yield self

    async def fetchval(self, query: str, *args: object) -> bytes:
        return bytes(32 * 3)  # a stored partial tile of three hashes


class NoRevocations:
    async def check(self, claims: object) -> None:
        return None


async def test_a_request_over_the_limit_gets_503_while_the_first_is_served() -> None:
    pool = HeldPool()
    api = TilesApi(lambda: pool, TokenVerifier(), NoRevocations(), (), max_concurrent=1)
    async with TestClient(TestServer(api.application())) as client:
        first = asyncio.ensure_future(client.get("/tile/0/000.p/3"))
        await pool.waiting.wait()  # the first request holds the only slot
        refused = await client.get("/tile/0/000.p/3")
        assert refused.status == 503 and refused.headers["Retry-After"] == "1"
        pool.release.set()
        served = await first
        assert served.status == 200 and await served.read() == bytes(96)
        again = await client.get("/tile/0/000.p/3")
        assert again.status == 200  # the slot is free again


def test_plaintext_only_on_loopback_or_when_allowed() -> None:
    assert server_tls("127.0.0.1", GrpcTls()) is None
    assert server_tls("0.0.0.0", GrpcTls(allow_plaintext=True)) is None
    with pytest.raises(SettingsError, match="refusing plaintext tlog-tiles HTTP on 0.0.0.0"):
        server_tls("0.0.0.0", GrpcTls())


async def test_tiles_are_served_over_https_with_the_grpc_certificate(tmp_path: Path) -> None:
    ca = ThrowawayCA(tmp_path)
    cert, key = ca.issue("ledger", server=True)
    tls = server_tls("127.0.0.1", GrpcTls(cert.read_bytes(), key.read_bytes()))
    assert tls is not None
    pool = HeldPool()
    pool.release.set()
    api = TilesApi(lambda: pool, TokenVerifier(), NoRevocations(), (), max_concurrent=4)
    server = TilesServer(api, TilesSettings("127.0.0.1", free_port()), tls)
    await server.start()
    try:
        trusting = ssl.create_default_context(cafile=str(ca.ca_file))
        url = f"127.0.0.1:{server.settings.port}/tile/0/000.p/3"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"https://{url}", ssl=trusting) as response:
                assert response.status == 200 and await response.read() == bytes(96)
            with pytest.raises(aiohttp.ClientError):  # no plaintext beside it
                async with http.get(f"http://{url}") as response:
                    await response.read()
    finally:
        await server.stop()
