"""LedgerService over gRPC: the read side of the log (docs/architecture.md, Ledger contract).

Every instance serves reads from the database, the active sequencer and any
standby alike. Checkpoints, the verifier key and proofs hold only hashes and
need no token. Entries reveal who did what to whom; see the README for how
they are protected once identity tokens exist.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, AsyncIterator, Callable, Sequence

import asyncpg
import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from medledger.ledger import proofs, store
from medledger.ledger.intake import MAX_EVENT_ID_CHARS
from medledger.ledger.publisher import checkpoint_message
from medledger.ledger.settings import LedgerSettings
from medledger.ledger.tile_cache import TileCache
from medledger.ledger.watch import CheckpointFeed
from medledger.runtime.errors import DependencyUnavailable, InvalidArgument, NotFound, OutOfRange
from medledger.v1 import ledger_pb2, ledger_pb2_grpc

MAX_ENTRIES_PER_CALL = 100_000
ENTRY_PAGE = 1000
CHECKPOINT_PAGE = 1000
MAX_SIZE = 2**63 - 1  # sizes and indices are int64 in the database


def checked_event_id(event_id: str) -> str:
    """An event id the ledger could have sequenced (intake admits none empty
    or longer); NUL characters are refused for every rpc (request_guard)."""
    if not event_id:
        raise InvalidArgument("event_id is required")
    if len(event_id) > MAX_EVENT_ID_CHARS:
        raise InvalidArgument(f"event_id is longer than {MAX_EVENT_ID_CHARS} characters")
    return event_id


def entry_page(rows: Sequence[asyncpg.Record | tuple[Any, ...]]) -> ledger_pb2.EntryPage:
    """An EntryPage from ``store.entry_page`` rows, built in place (audits read
    every entry, so no intermediate objects); a batch shares one commit time,
    so each distinct timestamp is converted once."""
    page = ledger_pb2.EntryPage()
    add = page.entries.add
    stamps: dict[datetime, Timestamp] = {}
    for index, event_id, leaf_hash, chain_hash, event, sequenced_at in rows:
        stamp = stamps.get(sequenced_at)
        if stamp is None:
            stamp = stamps[sequenced_at] = Timestamp()
            stamp.FromDatetime(sequenced_at)
        add(index=index, event=event, leaf_hash=leaf_hash, chain_hash=chain_hash, event_id=event_id, sequenced_at=stamp)
    return page


class LedgerApi(ledger_pb2_grpc.LedgerServiceServicer):
    def __init__(
        self, settings: LedgerSettings, pool: Callable[[], asyncpg.Pool], feed: CheckpointFeed, tiles: TileCache
    ) -> None:
        self.settings = settings
        self._pool = pool
        self.feed = feed
        self.tiles = tiles  # proofs' nodes, from memory where it holds them
        self._known_size = 0  # the log only grows: a size seen once stays valid

    async def _current_size(self, conn: store.Conn, at_least: int) -> int:
        """The committed tree size, without a query when ``at_least`` is known valid."""
        if at_least and at_least <= self._known_size:
            return self._known_size
        self._known_size = max(self._known_size, await store.tree_size(conn))
        return self._known_size

    def pool(self) -> asyncpg.Pool:
        try:
            return self._pool()
        except AttributeError:
            raise DependencyUnavailable("ledger database not connected yet") from None

    async def _latest(self, conn: store.Conn) -> store.StoredCheckpoint:
        cp = await store.latest_checkpoint(conn)
        if cp is None:
            raise DependencyUnavailable("no checkpoint signed yet; the sequencer is starting")
        return cp

    async def GetCheckpoint(self, request: ledger_pb2.GetCheckpointRequest, context: grpc.aio.ServicerContext) -> ledger_pb2.Checkpoint:
        async with self.pool().acquire() as conn:
            return checkpoint_message(await self._latest(conn))

    async def GetVerifierKey(self, request: ledger_pb2.GetVerifierKeyRequest, context: grpc.aio.ServicerContext) -> ledger_pb2.VerifierKey:
        return ledger_pb2.VerifierKey(verifier_key=self.settings.signer.verifier_key, origin=self.settings.origin)

    async def _pages(self, request: ledger_pb2.GetEntriesRequest) -> AsyncIterator[ledger_pb2.EntryPage]:
        count = min(request.count or MAX_ENTRIES_PER_CALL, MAX_ENTRIES_PER_CALL)
        async with self.pool().acquire() as conn:
            size = await store.tree_size(conn)
        if request.start >= size:
            raise OutOfRange(f"start {request.start} is beyond the log of {size} entries")
        end = min(size, request.start + count)

        async def fetch(start: int) -> list[asyncpg.Record]:
            async with self.pool().acquire() as conn:
                return await store.entry_page(conn, start, min(ENTRY_PAGE, end - start))

        # The next page is read from the database while this one is sent.
        upcoming: asyncio.Task[list[asyncpg.Record]] | None = asyncio.create_task(fetch(request.start))
        try:
            while upcoming is not None:
                page = await upcoming
                if not page:
                    break
                position = page[-1]["idx"] + 1
                upcoming = asyncio.create_task(fetch(position)) if position < end else None
                yield entry_page(page)
        finally:
            if upcoming is not None:
                upcoming.cancel()

    async def GetEntries(self, request: ledger_pb2.GetEntriesRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[ledger_pb2.Entry]:
        async for page in self._pages(request):
            for entry in page.entries:
                yield entry

    async def GetEntryPages(self, request: ledger_pb2.GetEntriesRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[ledger_pb2.EntryPage]:
        async for page in self._pages(request):
            yield page

    async def GetEntryByEventId(self, request: ledger_pb2.GetEntryByEventIdRequest, context: grpc.aio.ServicerContext) -> ledger_pb2.Entry:
        event_id = checked_event_id(request.event_id)
        async with self.pool().acquire() as conn:
            entry = await store.entry_by_event_id(conn, event_id)
        if entry is None:
            raise NotFound(f"no ledger entry for event_id {event_id}")
        return entry_page([entry]).entries[0]

    async def GetProofBundle(self, request: ledger_pb2.GetProofBundleRequest, context: grpc.aio.ServicerContext) -> ledger_pb2.ProofBundle:
        """Entry and newest checkpoint from one statement, the proof from the
        tiles against that checkpoint's size: the three always agree."""
        event_id = checked_event_id(request.event_id)
        async with self.pool().acquire() as conn:
            found = await store.entry_with_latest_checkpoint(conn, event_id)
        if found is None:
            raise DependencyUnavailable("no checkpoint signed yet; the sequencer is starting")
        row, cp = found
        if row is None:
            raise NotFound(f"no ledger entry for event_id {event_id}")
        entry = entry_page([row]).entries[0]
        if entry.index >= cp.tree_size:
            raise NotFound(
                f"event_id {event_id} is sequenced (entry {entry.index}) but not yet under a signed checkpoint"
                f" (the latest covers {cp.tree_size} entries): ask again shortly"
            )
        path = await self._inclusion(entry.index, cp.tree_size)
        return proofs.bundle(entry, path, cp.note, self.settings.signer.verifier_key)

    async def _sizes(self, conn: store.Conn, requested: int) -> tuple[int, int]:
        """(size to prove against, committed size); 0 means the latest checkpoint."""
        if requested:
            return requested, await self._current_size(conn, requested)
        latest = (await self._latest(conn)).tree_size
        return latest, await self._current_size(conn, latest)

    async def _sizes_known(self, requested: int) -> tuple[int, int]:
        """``_sizes`` without touching the database when the size is known valid
        (a pool connection's release alone costs a round trip)."""
        if requested and requested <= self._known_size:
            return requested, self._known_size
        async with self.pool().acquire() as conn:
            return await self._sizes(conn, requested)

    async def _inclusion(self, index: int, size: int) -> ledger_pb2.InclusionProof:
        """The proof message of a checked (index, size), from the tiles."""
        proof = await proofs.inclusion(self.tiles, index, size)
        return ledger_pb2.InclusionProof(leaf_index=index, tree_size=size, hashes=proof.hashes, root_hash=proof.roots[0])

    async def GetInclusionProof(self, request: ledger_pb2.GetInclusionProofRequest, context: grpc.aio.ServicerContext) -> ledger_pb2.InclusionProof:
        size, current = await self._sizes_known(request.tree_size)
        proofs.check_inclusion(request.index, size, current)
        return await self._inclusion(request.index, size)

    async def GetInclusionProofByHash(self, request: ledger_pb2.GetInclusionProofByHashRequest, context: grpc.aio.ServicerContext) -> ledger_pb2.InclusionProof:
        if len(request.leaf_hash) != 32:
            raise InvalidArgument(f"leaf_hash must be 32 bytes, got {len(request.leaf_hash)}")
        async with self.pool().acquire() as conn:
            size, current = await self._sizes(conn, request.tree_size)
            if size > current:
                raise OutOfRange(f"tree_size {size} is beyond the current tree of {current} entries")
            index = await store.index_of_leaf(conn, request.leaf_hash, size)
        if index is None:
            raise NotFound(f"no leaf with hash {request.leaf_hash.hex()} in the tree of {size} entries")
        return await self._inclusion(index, size)

    async def GetConsistencyProof(self, request: ledger_pb2.GetConsistencyProofRequest, context: grpc.aio.ServicerContext) -> ledger_pb2.ConsistencyProof:
        second, current = await self._sizes_known(request.second_size)
        proofs.check_consistency(request.first_size, second, current)
        proof = await proofs.consistency(self.tiles, request.first_size, second)
        return ledger_pb2.ConsistencyProof(
            first_size=request.first_size, second_size=second, hashes=proof.hashes,
            first_root_hash=proof.roots[0], second_root_hash=proof.roots[1],
        )

    async def ListCheckpoints(self, request: ledger_pb2.ListCheckpointsRequest, context: grpc.aio.ServicerContext) -> ledger_pb2.ListCheckpointsResponse:
        page = min(request.page_size or CHECKPOINT_PAGE, CHECKPOINT_PAGE)
        async with self.pool().acquire() as conn:
            # one more than the page: whether another page follows
            # a size beyond int64 is beyond every checkpoint: an empty page, not a database error
            found = await store.checkpoints_after(conn, min(request.start_size, MAX_SIZE) - 1, page + 1)
        reply = ledger_pb2.ListCheckpointsResponse(checkpoints=[checkpoint_message(cp) for cp in found[:page]])
        if len(found) > page:
            reply.next_start_size = found[page - 1].tree_size + 1
        return reply

    async def WatchCheckpoints(self, request: ledger_pb2.WatchCheckpointsRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[ledger_pb2.Checkpoint]:
        async for checkpoint in self.feed.watch():
            yield checkpoint
