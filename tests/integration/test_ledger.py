"""The ledger against the real broker and database, as operators run it."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import asyncpg
import grpc
import pytest

import medledger.ledger
from medledger.audit.prove import verify_bundle
from medledger.ledger import merkle, note
from medledger.ledger import store
from medledger.ledger.publisher import entry_message
from medledger.runtime.errors import DependencyUnavailable, NotFound
from medledger.runtime.postgres import apply_migrations, ensure_database
from medledger.runtime.settings import Topics
from medledger.v1 import events_pb2, ledger_pb2
from medledger.testing.ledger import (
    audit, consume_all, pool_only_api, produce, produce_raw, sample_events, stub, wait_for_checkpoint,
)
from medledger.testing.identity import IdentityHarness
from medledger.testing.stack import PRODUCERS, ServiceProcess

Metadata = tuple[tuple[str, str], ...]


async def test_sequences_events_and_serves_verifiable_proofs(
    spawn: Callable[..., ServiceProcess], topics: Topics, auditor_metadata: Metadata
) -> None:
    ledger_proc = spawn("ledger").wait_serving()
    events = sample_events(200, topics)
    await produce(events[:120])
    channel, ledger = stub(ledger_proc.address)
    with channel:
        first = wait_for_checkpoint(ledger, 120)
        await produce(events[120:])
        second = wait_for_checkpoint(ledger, 200)
        entries = audit(ledger, second, auditor_metadata)
        assert {e.event_id for e in entries} == {e.event_id for _, e in events}
        # every entry is the exact bytes produced
        produced = {e.event_id: e.SerializeToString() for _, e in events}
        assert all(produced[e.event_id] == e.event for e in entries)
        for index in (0, 1, 63, 64, 119, 199):
            proof = ledger.GetInclusionProof(ledger_pb2.GetInclusionProofRequest(index=index, tree_size=200))
            merkle.verify_inclusion(entries[index].leaf_hash, index, 200, list(proof.hashes), second.root_hash)
            by_hash = ledger.GetInclusionProofByHash(
                ledger_pb2.GetInclusionProofByHashRequest(leaf_hash=entries[index].leaf_hash, tree_size=200)
            )
            assert by_hash.leaf_index == index and by_hash.hashes == proof.hashes
        size1 = first.tree_size
        cons = ledger.GetConsistencyProof(ledger_pb2.GetConsistencyProofRequest(first_size=size1, second_size=200))
        merkle.verify_consistency(size1, 200, list(cons.hashes), first.root_hash, second.root_hash)
        found = ledger.GetEntryByEventId(
            ledger_pb2.GetEntryByEventIdRequest(event_id=entries[5].event_id), metadata=auditor_metadata
        )
        assert found == entries[5]
    # followers: ledger.entries carries every entry once, in order
    published = await consume_all(topics.ledger_entries, 200)
    followed = [events_pb2.LedgerEntry.FromString(r.value) for r in published]
    assert [f.index for f in followed] == list(range(200))
    assert all(f.source_topic in topics.event_topics and f.event == entries[f.index].event for f in followed)
    cps = await consume_all(topics.ledger_checkpoints, 1)
    sizes = [ledger_pb2.Checkpoint.FromString(r.value).tree_size for r in cps]
    assert sizes == sorted(set(sizes)) and sizes[-1] == 200


BACKLOG = 7000  # several of the publisher's 2,000-entry rounds


async def test_followers_get_entries_as_stored_and_no_checkpoint_before_its_entries(
    spawn: Callable[..., ServiceProcess], topics: Topics, service_env: dict[str, str]
) -> None:
    """ledger.entries carries each entry exactly as the database holds it
    (the publisher hands committed entries over in memory), and a checkpoint
    reaches ledger.checkpoints only once every entry it covers is on
    ledger.entries, even when one committed batch takes several publishing
    rounds: a follower that sees a checkpoint can find its entries."""
    await produce(sample_events(BACKLOG, topics))  # before the ledger starts: its first batches are large
    ledger_proc = spawn("ledger").wait_serving()
    channel, ledger = stub(ledger_proc.address)
    with channel:
        wait_for_checkpoint(ledger, BACKLOG)
    published = await consume_all(topics.ledger_entries, BACKLOG)
    conn = await asyncpg.connect(service_env["MEDLEDGER_LEDGER_DATABASE_URL"])
    try:
        stored = await store.entries_from(conn, 0, BACKLOG + 1)
    finally:
        await conn.close()
    assert [r.value for r in published] == [entry_message(e).SerializeToString() for e in stored]
    # Kafka's record timestamps are the publisher's append times
    appended = {events_pb2.LedgerEntry.FromString(r.value).index: r.timestamp for r in published}
    checkpoints = [(ledger_pb2.Checkpoint.FromString(r.value).tree_size, r.timestamp)
                   for r in await consume_all(topics.ledger_checkpoints, 1)]
    assert checkpoints[-1][0] == BACKLOG
    for size, at in checkpoints:
        if size:
            assert at >= appended[size - 1], f"checkpoint {size} was published before entry {size - 1}"


WAVES = 12


async def test_every_stored_checkpoint_signs_the_root_and_chain_of_the_entries_it_covers(
    spawn: Callable[..., ServiceProcess], topics: Topics, service_env: dict[str, str]
) -> None:
    """A batch commits the checkpoint signed over it in its own transaction,
    and a quiet log gets one of its own: either way every stored checkpoint,
    across a crash too, is the pinned key's signature over the root and the
    hash chain of exactly the entries below its size."""
    ledger_proc = spawn("ledger").wait_serving()
    pinned = note.NoteVerifier.from_verifier_key(
        note.NoteSigner.from_signer_key(Path(ledger_proc.env["MEDLEDGER_LEDGER_SIGNING_KEY_FILE"]).read_text()).verifier_key
    )
    events = sample_events(WAVES * 150, topics)
    channel, ledger = stub(ledger_proc.address)
    with channel:
        for wave in range(WAVES):  # waves a checkpoint interval apart: many batches, many checkpoints
            if wave == WAVES // 2:
                ledger_proc.kill()
                ledger_proc = spawn("ledger").wait_serving()
                channel.close()
                channel, ledger = stub(ledger_proc.address)
            await produce(events[wave * 150 : (wave + 1) * 150])
            await asyncio.sleep(0.15)
        wait_for_checkpoint(ledger, len(events))
    channel.close()
    conn = await asyncpg.connect(service_env["MEDLEDGER_LEDGER_DATABASE_URL"])
    try:
        entries = await store.entries_from(conn, 0, len(events) + 1)
        checkpoints = await store.checkpoints_after(conn, -1, 10_000)
    finally:
        await conn.close()
    assert len(entries) == len(events) and len(checkpoints) >= WAVES
    roots, chains = {0: merkle.EMPTY_ROOT}, {0: merkle.GENESIS_CHAIN}
    tree, chain = merkle.CompactRange.empty(), merkle.GENESIS_CHAIN
    for e in entries:
        tree.append(e.leaf_hash)
        chain = merkle.chain_hash(chain, e.leaf_hash)
        roots[tree.size], chains[tree.size] = tree.root(), chain
        assert e.chain_hash == chain
    for cp in checkpoints:
        signed = note.open_checkpoint(cp.note, pinned)
        assert (signed.size, signed.root) == (cp.tree_size, cp.root_hash)
        assert cp.root_hash == roots[cp.tree_size], f"checkpoint {cp.tree_size} signs another root"
        assert cp.chain_hash == chains[cp.tree_size], f"checkpoint {cp.tree_size} names another chain head"


REPEATED = 2000


async def once_consumed(service_env: dict[str, str], records: int, ledger: ServiceProcess) -> tuple[int, int, list[str]]:
    """Once the ledger has decided on ``records`` Kafka records (its offsets
    commit with the batch that consumed them): its entries, their distinct
    event ids, and the reasons of its rejections."""
    conn = await asyncpg.connect(service_env["MEDLEDGER_LEDGER_DATABASE_URL"])
    try:
        deadline = asyncio.get_running_loop().time() + 120
        while await conn.fetchval("SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets") < records:
            assert asyncio.get_running_loop().time() < deadline, f"the ledger did not consume them:\n{ledger.log_tail()}"
            await asyncio.sleep(0.1)
        count, distinct = await conn.fetchrow("SELECT count(*), count(DISTINCT event_id) FROM entries")
        reasons = [r["reason"] for r in await conn.fetch("SELECT reason FROM rejected")]
    finally:
        await conn.close()
    return count, distinct, reasons


@pytest.mark.parametrize("crash", [False, True], ids=["same leader", "after a crash"])
async def test_events_published_again_after_they_were_sequenced_are_not_sequenced_twice(
    spawn: Callable[..., ServiceProcess], topics: Topics, service_env: dict[str, str], crash: bool
) -> None:
    """A relay that publishes again after a crash repeats events that the
    ledger may have sequenced long before, in an earlier batch: the copies
    are found in the database and skipped, and an old id with new content is
    rejected, so the log holds each event once. The same after the ledger
    itself crashed, when the new leader knows the log only from the database."""
    events = sample_events(REPEATED, topics)
    await produce(events)
    ledger_proc = spawn("ledger").wait_serving()
    channel, ledger = stub(ledger_proc.address)
    with channel:
        wait_for_checkpoint(ledger, REPEATED)
    if crash:
        ledger_proc.kill()
        ledger_proc = spawn("ledger").wait_serving()
    topic, old = events[REPEATED // 2]
    conflicting = events_pb2.EventEnvelope()
    conflicting.CopyFrom(old)
    conflicting.aggregate_id = old.aggregate_id + "-changed"
    PRODUCERS.signers[conflicting.producer].sign(conflicting)
    await produce([*events, (topic, conflicting)])
    count, distinct, reasons = await once_consumed(service_env, 2 * REPEATED + 1, ledger_proc)
    assert (count, distinct) == (REPEATED, REPEATED)
    assert len(reasons) == 1 and "different content" in reasons[0]


async def test_duplicates_and_malformed_records_are_not_sequenced(
    spawn: Callable[..., ServiceProcess], topics: Topics, auditor_metadata: Metadata
) -> None:
    ledger_proc = spawn("ledger").wait_serving()
    (topic, event), (other_topic, other) = sample_events(2, topics)
    conflicting = events_pb2.EventEnvelope()
    conflicting.CopyFrom(other)
    conflicting.event_id = event.event_id  # same id, different content, genuinely signed
    PRODUCERS.signers[conflicting.producer].sign(conflicting)
    await produce([(topic, event), (topic, event)])  # a producer that sent the same event twice
    garbage = b"\xff\x00not a protobuf"
    no_id = events_pb2.EventEnvelope(event_type="medledger.v1.X").SerializeToString()
    no_type = events_pb2.EventEnvelope(event_id="e-1").SerializeToString()
    too_big = events_pb2.EventEnvelope(event_id="big", event_type="medledger.v1.X", aggregate_id="p" * (1024 * 1024)).SerializeToString()
    await produce_raw(topics.access_events, [garbage, no_id, no_type, too_big])
    await produce([(other_topic, conflicting), (other_topic, other)])
    channel, ledger = stub(ledger_proc.address)
    with channel:
        wait_for_checkpoint(ledger, 2)
        rejected = await consume_all(topics.ledger_rejected, 5)
        # Nothing else gets sequenced: a marker behind the records above on every
        # partition they went to; once the markers are entries, the ledger has
        # decided on all of those records, so only the markers may follow.
        markers = sample_events(4, topics, start=2)  # one per event topic
        keys = {topic: event.aggregate_id, other_topic: other.aggregate_id, topics.access_events: "raw"}
        for marker_topic, marker in markers:
            await produce_raw(marker_topic, [marker.SerializeToString()], key=keys.get(marker_topic, marker.aggregate_id))
        cp = wait_for_checkpoint(ledger, 2 + len(markers))
        assert cp.tree_size == 2 + len(markers)
        entries = audit(ledger, cp, auditor_metadata)
    assert [e.event_id for e in entries[:2]] == [event.event_id, other.event_id]
    assert {e.event_id for e in entries[2:]} == {m.event_id for _, m in markers}
    reasons = [events_pb2.RejectedRecord.FromString(r.value) for r in rejected]
    assert len(reasons) == 5
    by_offset = {(r.source_topic, r.source_offset): r for r in reasons}
    assert "EventEnvelope" in by_offset[(topics.access_events, 0)].reason
    assert "event_id" in by_offset[(topics.access_events, 1)].reason
    assert "event_type" in by_offset[(topics.access_events, 2)].reason
    assert "limit" in by_offset[(topics.access_events, 3)].reason
    assert by_offset[(topics.access_events, 0)].value_sha256 == hashlib.sha256(garbage).digest()
    assert any("different content" in r.reason for r in reasons)


async def test_forged_events_of_every_kind_are_rejected_as_unauthenticated(
    spawn: Callable[..., ServiceProcess], topics: Topics, auditor_metadata: Metadata
) -> None:
    """An attacker who can write to Kafka publishes forgeries of a consent
    event; none becomes an entry, each is on ledger.rejected with the reason,
    and the genuine event published after them is sequenced."""
    ledger_proc = spawn("ledger").wait_serving()
    (_, genuine), = sample_events(1, topics, start=1)  # a consent.events event
    unsigned = events_pb2.EventEnvelope()
    unsigned.CopyFrom(genuine)
    unsigned.ClearField("signature")
    unsigned.ClearField("producer_key_id")
    forged = PRODUCERS.forgeries(unsigned, not_allowed="records")
    # the genuine event, valid on its own topic, replayed onto another one
    forged["genuine on the wrong topic"] = genuine.SerializeToString()
    await produce_raw(topics.consent_events, [v for k, v in forged.items() if k != "genuine on the wrong topic"])
    await produce_raw(topics.identity_events, [forged["genuine on the wrong topic"]])
    await produce([(topics.consent_events, genuine)])
    channel, ledger = stub(ledger_proc.address)
    with channel:
        cp = wait_for_checkpoint(ledger, 1)
        rejected = await consume_all(topics.ledger_rejected, len(forged))
        entries = audit(ledger, cp, auditor_metadata)
    assert [e.event for e in entries] == [genuine.SerializeToString()]
    reasons = [events_pb2.RejectedRecord.FromString(r.value).reason for r in rejected]
    assert len(reasons) == len(forged)
    assert all(r.startswith("unauthenticated producer") for r in reasons), reasons
    sha = {events_pb2.RejectedRecord.FromString(r.value).value_sha256 for r in rejected}
    assert sha == {hashlib.sha256(v).digest() for v in forged.values()}


def _status(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    raise AssertionError("expected an error status")


async def test_bad_requests_get_clear_statuses(
    spawn: Callable[..., ServiceProcess], topics: Topics, isolated_identity: IdentityHarness
) -> None:
    auditor = isolated_identity.auditor().metadata
    hospital = isolated_identity.organization()
    practitioner = isolated_identity.practitioner(hospital).metadata
    ledger_proc = spawn("ledger").wait_serving()
    await produce(sample_events(10, topics))
    channel, ledger = stub(ledger_proc.address)
    with channel:
        wait_for_checkpoint(ledger, 10)
        R = ledger_pb2
        assert _status(lambda: ledger.GetInclusionProof(R.GetInclusionProofRequest(index=10, tree_size=10))) == grpc.StatusCode.OUT_OF_RANGE
        assert _status(lambda: ledger.GetInclusionProof(R.GetInclusionProofRequest(index=0, tree_size=11))) == grpc.StatusCode.OUT_OF_RANGE
        assert _status(lambda: ledger.GetInclusionProof(R.GetInclusionProofRequest(index=5, tree_size=3))) == grpc.StatusCode.INVALID_ARGUMENT
        assert _status(lambda: ledger.GetConsistencyProof(R.GetConsistencyProofRequest(first_size=5, second_size=3))) == grpc.StatusCode.INVALID_ARGUMENT
        assert _status(lambda: ledger.GetConsistencyProof(R.GetConsistencyProofRequest(first_size=0, second_size=3))) == grpc.StatusCode.INVALID_ARGUMENT
        assert _status(lambda: ledger.GetConsistencyProof(R.GetConsistencyProofRequest(first_size=3, second_size=99))) == grpc.StatusCode.OUT_OF_RANGE
        assert _status(lambda: list(ledger.GetEntries(R.GetEntriesRequest(start=10, count=1), metadata=auditor))) == grpc.StatusCode.OUT_OF_RANGE
        assert _status(lambda: ledger.GetEntryByEventId(R.GetEntryByEventIdRequest(event_id="nope"), metadata=auditor)) == grpc.StatusCode.NOT_FOUND
        # entries say who did what to whom: auditors and services only
        assert _status(lambda: list(ledger.GetEntries(R.GetEntriesRequest(start=0, count=1)))) == grpc.StatusCode.UNAUTHENTICATED
        assert _status(lambda: list(ledger.GetEntryPages(R.GetEntriesRequest(start=0, count=1), metadata=(("authorization", "Bearer forged.token.here"),)))) == grpc.StatusCode.UNAUTHENTICATED
        assert _status(lambda: list(ledger.GetEntries(R.GetEntriesRequest(start=0, count=1), metadata=practitioner))) == grpc.StatusCode.PERMISSION_DENIED
        assert len(list(ledger.GetEntries(R.GetEntriesRequest(start=0, count=3), metadata=auditor))) == 3
        assert _status(lambda: ledger.GetInclusionProofByHash(R.GetInclusionProofByHashRequest(leaf_hash=b"\x00" * 32))) == grpc.StatusCode.NOT_FOUND
        assert _status(lambda: ledger.GetInclusionProofByHash(R.GetInclusionProofByHashRequest(leaf_hash=b"short"))) == grpc.StatusCode.INVALID_ARGUMENT
        # a good request still works afterwards: bad input changed nothing
        assert ledger.GetCheckpoint(R.GetCheckpointRequest()).tree_size == 10


async def test_a_proof_bundle_comes_in_one_call_and_verifies_offline(
    spawn: Callable[..., ServiceProcess], topics: Topics, isolated_identity: IdentityHarness
) -> None:
    """GetProofBundle (issue #10): entry, latest checkpoint and the proof between
    them, checked with nothing but the pinned key; callers as GetEntryByEventId."""
    hospital = isolated_identity.organization()
    service, auditor = isolated_identity.service(hospital).metadata, isolated_identity.auditor().metadata
    patient, practitioner = isolated_identity.patient(hospital).metadata, isolated_identity.practitioner(hospital).metadata
    ledger_proc = spawn("ledger").wait_serving()
    pinned = note.NoteVerifier.from_verifier_key(
        note.NoteSigner.from_signer_key(Path(ledger_proc.env["MEDLEDGER_LEDGER_SIGNING_KEY_FILE"]).read_text()).verifier_key
    )
    events = sample_events(40, topics)
    await produce(events[:30])
    R = ledger_pb2
    channel, ledger = stub(ledger_proc.address)
    with channel:
        wait_for_checkpoint(ledger, 30)
        latest = ledger.GetCheckpoint(R.GetCheckpointRequest())
        for index in (0, 17, 29):
            _, event = events[index]
            got = ledger.GetProofBundle(R.GetProofBundleRequest(event_id=event.event_id), metadata=service)
            result = verify_bundle(got, pinned)
            assert result.valid, [f.describe() for f in result.findings]
            assert got.entry.event == event.SerializeToString() and result.event_id == event.event_id
            assert got.checkpoint == latest.checkpoint and got.inclusion_proof.tree_size == latest.tree_size == 30
            assert got.verifier_key_name == "+".join(pinned.verifier_key.split("+")[:2])
            assert got.entry == ledger.GetEntryByEventId(R.GetEntryByEventIdRequest(event_id=event.event_id), metadata=auditor)
        # a newer checkpoint: the same event is proved against it
        await produce(events[30:])
        wait_for_checkpoint(ledger, 40)
        newer = ledger.GetProofBundle(R.GetProofBundleRequest(event_id=events[17][1].event_id), metadata=auditor)
        assert newer.checkpoint == ledger.GetCheckpoint(R.GetCheckpointRequest()).checkpoint
        assert newer.inclusion_proof.tree_size == 40 and verify_bundle(newer, pinned).valid

        def status(event_id: str, metadata: Metadata = service) -> grpc.StatusCode:
            return _status(lambda: ledger.GetProofBundle(R.GetProofBundleRequest(event_id=event_id), metadata=metadata))

        assert status("0190a1b2-0000-7000-8000-000000000000") == grpc.StatusCode.NOT_FOUND
        assert status("") == grpc.StatusCode.INVALID_ARGUMENT
        assert status("e" * 201) == grpc.StatusCode.INVALID_ARGUMENT
        assert status("nul\x00id") == grpc.StatusCode.INVALID_ARGUMENT
        # entries say who did what to whom: no token, a patient or a practitioner get nothing
        some = events[0][1].event_id
        assert status(some, ()) == grpc.StatusCode.UNAUTHENTICATED
        assert status(some, patient) == grpc.StatusCode.PERMISSION_DENIED
        assert status(some, practitioner) == grpc.StatusCode.PERMISSION_DENIED


async def test_a_sequenced_event_not_yet_under_a_checkpoint_has_no_bundle_yet(
    database_factory: Callable[[str], str]
) -> None:
    """The window between the sequencer's commit and its checkpoint, held open:
    the handler over a real ledger database with one entry and only the empty
    log's checkpoint (before any, the ledger is still starting)."""
    url = database_factory("ledger_bundle")
    await ensure_database(url)
    conn = await asyncpg.connect(url)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=1)
    try:
        await apply_migrations(conn, Path(medledger.ledger.__file__).parent / "migrations")
        api = pool_only_api(pool)
        request = ledger_pb2.GetProofBundleRequest(event_id="e-0")
        with pytest.raises(DependencyUnavailable):
            await api.GetProofBundle(request, None)
        now = datetime.now(timezone.utc)
        await conn.execute("INSERT INTO checkpoints VALUES (0, $1, $2, $3, $4)", merkle.EMPTY_ROOT, bytes(32), b"cp 0\n", now)
        await conn.execute("INSERT INTO entries VALUES (0, 'e-0', $1, $2, $3, 't', 0, 0, $4)",
                           merkle.leaf_hash(b"x"), bytes(32), b"x", now)
        with pytest.raises(NotFound, match="sequenced .* but not yet under a signed checkpoint"):
            await api.GetProofBundle(request, None)
        with pytest.raises(NotFound, match="no ledger entry"):
            await api.GetProofBundle(ledger_pb2.GetProofBundleRequest(event_id="e-1"), None)
    finally:
        await pool.close()
        await conn.close()


async def test_watch_checkpoints_streams_each_new_checkpoint(spawn: Callable[..., ServiceProcess], topics: Topics) -> None:
    ledger_proc = spawn("ledger").wait_serving()
    channel, ledger = stub(ledger_proc.address)
    with channel:
        stream = ledger.WatchCheckpoints(ledger_pb2.WatchCheckpointsRequest(), timeout=60)
        first = next(stream)
        assert first.tree_size == 0 and first.root_hash == merkle.EMPTY_ROOT
        await produce(sample_events(5, topics))
        sizes = []
        for cp in stream:
            sizes.append(cp.tree_size)
            if cp.tree_size == 5:
                break
        stream.cancel()
    assert sizes == sorted(sizes) and sizes[-1] == 5


async def test_audit_command_verifies_a_live_ledger_against_a_pinned_key_only(
    spawn: Callable[..., ServiceProcess], topics: Topics, auditor_metadata: Metadata, tmp_path: Path
) -> None:
    import subprocess

    from medledger.testing.stack import MEDLEDGER

    ledger_proc = spawn("ledger").wait_serving()
    await produce(sample_events(50, topics))
    channel, ledger = stub(ledger_proc.address)
    with channel:
        wait_for_checkpoint(ledger, 50)
    token = auditor_metadata[0][1].removeprefix("Bearer ")
    # sample events carry placeholder payloads: the tree, chain and checkpoints are what is checked here
    base = [MEDLEDGER, "audit", "verify", "--ledger", ledger_proc.address, "--token", token, "--hashes-only"]
    clean = {k: v for k, v in ledger_proc.env.items() if not k.startswith("MEDLEDGER_AUDIT_")}
    # no pinned key: refused, whatever key the ledger would serve
    unpinned = subprocess.run(base, capture_output=True, text=True, env=clean)
    assert unpinned.returncode == 2 and "--verifier-key" in unpinned.stderr, unpinned
    # the operator derives the key from the signing key file and hands it over out of band
    pub = tmp_path / "ledger-checkpoint.pub"
    derived = subprocess.run([MEDLEDGER, "ledger", "verifier-key", "--signing-key-file",
                              ledger_proc.env["MEDLEDGER_LEDGER_SIGNING_KEY_FILE"]], capture_output=True, text=True, check=True)
    pub.write_text(derived.stdout)
    ok = subprocess.run([*base, "--verifier-key-file", str(pub)], capture_output=True, text=True, env=clean)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "50" in ok.stdout
    from medledger.ledger.note import NoteSigner

    impostor = NoteSigner.generate(derived.stdout.split("+")[0]).verifier_key
    bad = subprocess.run([*base, "--verifier-key", impostor], capture_output=True, text=True, env=clean)
    assert bad.returncode == 1, bad.stdout + bad.stderr
