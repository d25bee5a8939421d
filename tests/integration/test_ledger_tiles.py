"""The ledger's C2SP tlog-tiles HTTP API against the real broker and database:
what a transparency-log client fetches is exactly the signed log."""

from __future__ import annotations

from typing import Callable

import aiohttp

from medledger.ledger import merkle
from medledger.ledger.tlog_tiles import decode_bundle
from medledger.runtime.settings import Topics
from medledger.testing.identity import IdentityHarness
from medledger.testing.ledger import audit, produce, sample_envelope, sample_events, stub, wait_for_checkpoint
from medledger.testing.stack import PRODUCERS, ServiceProcess

SIZE = 600  # two full level-0 tiles and a partial one of width 88


def subtree_root(leaf_hashes: list[bytes]) -> bytes:
    tree = merkle.CompactRange.empty()
    for leaf in leaf_hashes:
        tree.append(leaf)
    return tree.root()


async def test_tiles_checkpoint_and_bundles_are_the_signed_log(
    spawn: Callable[..., ServiceProcess], topics: Topics, isolated_identity: IdentityHarness
) -> None:
    auditor = isolated_identity.auditor()
    ledger_proc = spawn("ledger").wait_serving()
    events = sample_events(SIZE, topics)
    await produce(events)
    channel, ledger = stub(ledger_proc.address)
    with channel:
        checkpoint = wait_for_checkpoint(ledger, SIZE)
        entries = audit(ledger, checkpoint, auditor.metadata)
    leaves = [e.leaf_hash for e in entries]
    base = ledger_proc.tiles_url
    async with aiohttp.ClientSession() as http:

        async def get(path: str, **headers: str) -> tuple[int, bytes, aiohttp.ClientResponse]:
            async with http.get(base + path, headers=headers) as response:
                return response.status, await response.read(), response

        status, body, response = await get("/checkpoint")
        assert (status, body) == (200, checkpoint.checkpoint)
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert response.headers["Cache-Control"] == "public, max-age=2"

        # level 0: leaf hashes, 256 to a full tile, immutable; the rest as the partial tile
        for index in (0, 1):
            status, body, response = await get(f"/tile/0/00{index}")
            assert (status, body) == (200, b"".join(leaves[index * 256 : (index + 1) * 256]))
            assert response.headers["Content-Type"] == "application/octet-stream"
            assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        status, partial, response = await get("/tile/0/002.p/88")
        assert (status, partial) == (200, b"".join(leaves[512:600]))
        assert "immutable" not in response.headers["Cache-Control"]
        assert (await get("/tile/0/002.p/40"))[1] == b"".join(leaves[512:552])  # an older checkpoint's width
        for missing in ("/tile/0/002", "/tile/0/002.p/89", "/tile/0/003.p/1", "/tile/1/000", "/tile/2/000.p/1"):
            assert (await get(missing))[0] == 404, missing

        # level 1: each hash the root of a full level-0 tile; the tiles rebuild the signed root
        status, level1, _ = await get("/tile/1/000.p/2")
        assert (status, level1) == (200, subtree_root(leaves[:256]) + subtree_root(leaves[256:512]))
        rebuilt = [body[i : i + 32] for body in ((await get("/tile/0/000"))[1], (await get("/tile/0/001"))[1], partial)
                   for i in range(0, len(body), 32)]
        assert subtree_root(rebuilt) == checkpoint.root_hash

        # malformed paths are the caller's mistake
        for bad in ("/tile/0/0", "/tile/0/000.p/256", "/tile/0/000.p/0", "/tile/64/000", "/tile/0/x000/001",
                    "/tile/entries/002.p/088"):
            assert (await get(bad))[0] == 400, bad
        assert (await get("/tiles/0/000"))[0] == 404

        # entry bundles: exact entry bytes, for network auditors only (as GetEntries)
        assert (await get("/tile/entries/000"))[0] == 401
        assert (await get("/tile/entries/000", Authorization="Bearer not-a-token"))[0] == 401
        organization = isolated_identity.organization()
        for refused in (isolated_identity.service(), isolated_identity.organization_auditor(organization),
                        isolated_identity.patient(organization)):
            status, _, _ = await get("/tile/entries/000", Authorization=f"Bearer {refused.token}")
            assert status == 403, refused.kind
        bearer = f"Bearer {auditor.token}"
        status, bundle, response = await get("/tile/entries/002.p/88", Authorization=bearer, **{"Accept-Encoding": "gzip"})
        assert status == 200 and response.headers.get("Content-Encoding") == "gzip"
        assert decode_bundle(bundle) == [e.event for e in entries[512:600]]
        status, bundle, response = await get("/tile/entries/000", Authorization=bearer)
        assert decode_bundle(bundle) == [e.event for e in entries[:256]]
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert [merkle.leaf_hash(e) for e in decode_bundle(bundle)] == leaves[:256]
        assert (await get("/tile/entries/002", Authorization=bearer))[0] == 404


async def test_an_entry_too_long_for_a_bundle_is_named_not_truncated(
    spawn: Callable[..., ServiceProcess], topics: Topics, isolated_identity: IdentityHarness
) -> None:
    auditor = isolated_identity.auditor()
    ledger_proc = spawn("ledger").wait_serving()
    big = sample_envelope(0, 0, "p" * 70_000)  # a valid, signed event over the uint16 length
    PRODUCERS.signers[big.producer].sign(big)
    await produce([(topics.event_topics[0], big)])
    await produce(sample_events(1, topics, start=1))
    channel, ledger = stub(ledger_proc.address)
    with channel:
        checkpoint = wait_for_checkpoint(ledger, 2)
        entries = audit(ledger, checkpoint, auditor.metadata)
    big_index = next(e.index for e in entries if e.event_id == big.event_id)
    bearer = {"Authorization": f"Bearer {auditor.token}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{ledger_proc.tiles_url}/tile/entries/000.p/2", headers=bearer) as response:
            assert response.status == 500
            assert f"entry {big_index} is {len(big.SerializeToString())} bytes" in await response.text()
        async with http.get(f"{ledger_proc.tiles_url}/tile/0/000.p/2") as response:
            assert await response.read() == b"".join(e.leaf_hash for e in entries)  # its hash is still served
