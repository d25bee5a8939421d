"""Issue 11's "Done when", on the real stack: a history built through the
identity, consent, records and ledger services (as processes, on the real
Kafka and PostgreSQL), then audited with ``medledger audit`` as an auditor
runs it.

The untouched history verifies (every hash, checkpoint, producer, consent,
record and erasure signature), over gRPC and from Kafka. Each tampering with
the ledger's PostgreSQL rows — an entry's bytes, a leaf hash, a chain hash, a
tree node, a checkpoint's signature, a deleted row, two swapped rows, the
whole suffix rewritten with consistent hashes and re-signed with another key
— is caught and located with exit code 1. Replay reproduces the live
projections and reports a planted divergence. Disclosures list exactly the
accesses that happened. A proof bundle verifies offline; a tampered one does
not."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, AsyncIterator, cast

import asyncpg
import pytest
from fhir.resources.R4B.bundle import Bundle

from medledger.audit import prove as proofs
from medledger.ledger import merkle, note
from medledger.ledger.tile_tree import TileEdge
from medledger.runtime.kafka import delete_topics, ensure_topics, topic_specs
from medledger.runtime.postgres import connect, drop_database
from medledger.runtime.settings import Topics
from medledger.testing.audit import (
    AuditedStack, AuditRun, History, audit, build_history, event_topic_envelopes, execute, ledger_copy, serve_ledger,
    wait_mirrored, wait_records_indexed, wait_sequenced,
)
from medledger.testing.consent import consent_env
from medledger.testing.identity import IdentityHarness, generate_key, identity_env
from medledger.testing.ledger import tamper_stored_hash
from medledger.testing.records import records_env
from medledger.testing.stack import BOOTSTRAP, PG_SERVER_URL, PRODUCERS, all_serving, free_port, service_environment, unique
from medledger.v1 import consent_pb2, events_pb2, ledger_pb2

ORIGIN = "audit-test.medledger.local/ledger"
# the checks as the report names them (services/audit/checks.py)
LEAF, CHAIN, INDEX, ROOT = "leaf hash", "chain hash", "index", "checkpoint root"


@pytest.fixture(scope="module")
async def audited(stack: None, producer_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AuditedStack]:
    topics = Topics(unique("ta") + ".")
    await ensure_topics(BOOTSTRAP, topic_specs(topics))
    run_dir = tmp_path_factory.mktemp("audit")
    databases: list[str] = []

    def database_for(service: str) -> str:
        databases.append(f"{PG_SERVER_URL}/{unique('test_audit_' + service)}")
        return databases[-1]

    env = service_environment(topics, database_for, run_dir, producer_env, ORIGIN)
    operator_key = generate_key()
    env.update(identity_env(run_dir, operator_key))
    # no identity harness until the identity process serves (set below): None until then, cast for the checker
    s = AuditedStack(env, topics, cast(IdentityHarness, None), run_dir, History())
    try:
        identity = s.spawn("identity").wait_serving()
        s.identity = IdentityHarness(identity.address, operator_key, identity, env)
        consent = s.spawn("consent", **consent_env(s.identity, run_dir))
        ledger = s.spawn("ledger")
        records = s.spawn("records", **records_env(s.identity, run_dir, env))
        all_serving(consent, ledger, records)
        build_history(s, consent, records, ledger)
        s.auditor_token()  # the auditor is registered now, so its registration is in the log under audit
        s.size = await wait_sequenced(s, ledger.address)
        await wait_mirrored(env["MEDLEDGER_CONSENT_DATABASE_URL"], topics.consent_events)
        await wait_records_indexed(env["MEDLEDGER_RECORDS_DATABASE_URL"], topics, BOOTSTRAP)
        for done in (consent, records, ledger):  # the identity service stays: it issues auditor tokens
            done.stop()
        s.ledger_database = env["MEDLEDGER_LEDGER_DATABASE_URL"]
        yield s
    finally:
        for proc in s.processes:
            proc.stop()
        if s.identity is not None:
            s.identity.close()
        for url in databases:
            await drop_database(url)
        await delete_topics(BOOTSTRAP, topics.all)


def verify_args(s: AuditedStack, address: str, *extra: str, key: Path | None = None) -> list[str]:
    return ["verify", "--ledger", address, "--token", s.auditor_token(), "--verifier-key-file",
            str(key or s.verifier_key_file), "--producer-keys-file", s.producer_keys_file, "--json",
            "--no-progress", *extra]


def verify_served(s: AuditedStack, url: str, *extra: str) -> AuditRun:
    """``audit verify`` (pinned keys, a token, --json) against a ledger
    process serving the database at url, stopped afterwards."""
    ledger = serve_ledger(s, url)
    try:
        return audit(*verify_args(s, ledger.address, *extra))
    finally:
        ledger.stop()


async def rows(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def checkpoint_sizes(url: str) -> list[int]:
    return [r["tree_size"] for r in await rows(url, "SELECT tree_size FROM checkpoints ORDER BY tree_size")]


def interval(sizes: list[int], index: int) -> list[int]:
    """[first, last] entry of the checkpoint interval holding index."""
    after = max(s for s in sizes if s <= index)
    return [after, min(s for s in sizes if s > index) - 1]


def findings(run_report: dict[str, Any], check: str) -> list[dict[str, Any]]:
    return [f for f in run_report["findings"] if f["check"] == check]


async def test_the_history_verifies_over_grpc_and_from_kafka(audited: AuditedStack, tmp_path: Path) -> None:
    s = audited
    async with ledger_copy(s) as url:
        run = verify_served(s, url, "--state", str(tmp_path / "state.json"))
    assert run.code == 0, run.stdout + run.stderr
    stats = run.report["stats"]
    assert stats["entries"] == s.size and stats["producer_signatures"] == s.size
    assert stats["signed_statements"] == {
        "consent signature": 2, "record signature": 2, "erasure signature": 1}
    assert stats["served_proofs"] >= 1 and run.report["findings"] == []
    assert json.loads((tmp_path / "state.json").read_text())["tree_size"] == s.size
    kafka = audit("verify", "--from-kafka", "--bootstrap", BOOTSTRAP, "--topic-prefix", s.topics.prefix,
                  "--verifier-key-file", str(s.verifier_key_file), "--producer-keys-file", s.producer_keys_file,
                  "--json", "--no-progress")
    assert kafka.code == 0, kafka.stdout + kafka.stderr
    assert kafka.report["stats"]["entries"] == s.size


def _names_a_node_from(stored: merkle.NodeId, detail: str) -> bool:
    """Whether a finding names a node computed from this stored hash (its tile
    holds the 8 levels from the stored one up)."""
    level, index = stored
    return any(
        level <= int(at) < level + 8 and int(i) >> (int(at) - level) == index
        for at, i in re.findall(r"\(level (\d+), index (\d+)\)", detail)
    )


def _flip(value: bytes, marker: bytes) -> bytes:
    at = value.index(marker) + len(marker) - 1
    return value[:at] + bytes([value[at] ^ 1]) + value[at + 1 :]


TAMPERINGS = ["entry bytes", "leaf hash", "chain hash", "tree node", "checkpoint signature", "deleted row", "swapped rows"]


@pytest.mark.parametrize("tampering", TAMPERINGS)
async def test_each_tampering_is_caught_and_located(audited: AuditedStack, tampering: str) -> None:
    s = audited
    async with ledger_copy(s) as url:
        sizes = await checkpoint_sizes(url)
        k = s.size // 2
        entry = (await rows(url, "SELECT * FROM entries WHERE idx = $1", k))[0]
        expect_checkpoint = None
        if tampering == "entry bytes":
            await execute(url, [("UPDATE entries SET event = $1 WHERE idx = $2", (_flip(entry["event"], b"medledger.v1."), k))])
        elif tampering == "leaf hash":
            await execute(url, [("UPDATE entries SET leaf_hash = $1 WHERE idx = $2", (merkle.leaf_hash(b"forged"), k))])
        elif tampering == "chain hash":
            await execute(url, [("UPDATE entries SET chain_hash = $1 WHERE idx = $2", (bytes(32), k))])
        elif tampering == "tree node":
            # a stored tile hash that a node of the proof between two stored checkpoints is computed from
            pairs = [(a, b) for a, b in zip(sizes, sizes[1:]) if a > 0]
            first, second, node = next((a, b, n) for a, b in pairs for n in merkle.consistency_plan(a, b).ids if n[0] > 0)
            stored = (node[0] - node[0] % 8, node[1] << (node[0] % 8))
            conn = await connect(url)
            try:
                await tamper_stored_hash(conn, *stored, bytes(32))
            finally:
                await conn.close()
        elif tampering == "checkpoint signature":
            expect_checkpoint = next(c for c in sizes if c > k)
            [cp] = await rows(url, "SELECT note FROM checkpoints WHERE tree_size = $1", expect_checkpoint)
            forged = cp["note"][:-10] + (b"A" if cp["note"][-10:-9] != b"A" else b"B") + cp["note"][-9:]
            await execute(url, [("UPDATE checkpoints SET note = $1 WHERE tree_size = $2", (forged, expect_checkpoint))])
        elif tampering == "deleted row":
            await execute(url, [("DELETE FROM entries WHERE idx = $1", (k,))])
        else:  # rows k and k + 2 exchange everything but their index
            other = (await rows(url, "SELECT * FROM entries WHERE idx = $1", k + 2))[0]
            swap = "UPDATE entries SET event = $1, leaf_hash = $2, chain_hash = $3, event_id = $4 WHERE idx = $5"
            await execute(url, [
                ("UPDATE entries SET event_id = 'moving' WHERE idx = $1", (k,)),
                (swap, (entry["event"], entry["leaf_hash"], entry["chain_hash"], entry["event_id"], k + 2)),
                (swap, (other["event"], other["leaf_hash"], other["chain_hash"], other["event_id"], k)),
            ])
        run = verify_served(s, url)
    assert run.code == 1, run.stdout + run.stderr
    report = run.report
    assert report["ok"] is False
    where = interval(sizes, k)
    if tampering == "entry bytes":
        assert [(f["index"], f["entries"]) for f in findings(report, LEAF)] == [(k, where)]
        assert findings(report, ROOT)[0]["entries"] == where
        assert findings(report, "producer signature")[0]["index"] == k
    elif tampering == "leaf hash":
        assert [f["index"] for f in findings(report, LEAF)] == [k]
        assert not findings(report, ROOT)  # the event bytes, which checkpoints sign, are intact
    elif tampering == "chain hash":
        assert [f["index"] for f in findings(report, CHAIN)] == [k, k + 1]
    elif tampering == "tree node":
        failed = findings(report, "consistency proof")
        assert failed and all(_names_a_node_from(stored, str(f["detail"])) for f in failed)
        assert any(f"(level {node[0]}, index {node[1]})" in str(f["detail"]) for f in failed)
        assert second in {f["checkpoint"] for f in failed}
        assert not findings(report, LEAF) and not findings(report, ROOT)
    elif tampering == "checkpoint signature":
        assert [f["checkpoint"] for f in findings(report, "checkpoint signature")] == [expect_checkpoint]
    elif tampering == "deleted row":
        [missing] = findings(report, INDEX)
        assert missing["index"] == k and missing["found"] == str(k + 1)
        assert findings(report, ROOT)[0]["entries"] == where
    else:
        assert {f["index"] for f in findings(report, CHAIN)} == {k, k + 1, k + 2, k + 3}
        assert findings(report, ROOT)[0]["entries"] == where


async def _rewrite_without(url: str, dropped: int, key: note.NoteSigner, later: list[bytes]) -> None:
    """What an operator with the database and a new signing key can do: drop
    one entry, recompute every leaf, chain and tree node after it, append
    what arrived since (``later``) and re-sign every checkpoint. Every event
    left is genuine, every hash consistent, and the log keeps growing."""
    old = await rows(url, "SELECT * FROM entries ORDER BY idx")
    kept = [dict(r) for r in old if r["idx"] != dropped]
    template = kept[-1]
    kept += [dict(template, event=value, event_id=events_pb2.EventEnvelope.FromString(value).event_id)
             for value in later]
    sizes = [size for size in await checkpoint_sizes(url) if size < len(kept)] + [len(kept)]
    tree, chain, entries, tiles, checkpoints = merkle.CompactRange.empty(), merkle.GENESIS_CHAIN, [], TileEdge(), []
    for i, r in enumerate(kept):
        if i in sizes:
            checkpoints.append((i, tree.root(), chain))
        leaf = merkle.leaf_hash(r["event"])
        chain = merkle.chain_hash(chain, leaf)
        for node_id, h in tree.append(leaf):
            tiles.add(node_id, h)
        entries.append((i, r["event_id"], leaf, chain, r["event"], r["source_topic"], r["source_partition"],
                        r["source_offset"], r["sequenced_at"]))
    if len(kept) in sizes:
        checkpoints.append((len(kept), tree.root(), chain))
    conn = await connect(url)
    try:
        async with conn.transaction():
            await conn.execute("TRUNCATE entries, tree_tiles, checkpoints")
            await conn.copy_records_to_table("entries", records=entries, columns=[
                "idx", "event_id", "leaf_hash", "chain_hash", "event", "source_topic", "source_partition",
                "source_offset", "sequenced_at"])
            await conn.copy_records_to_table(
                "tree_tiles", records=[(*tile, row) for tile, row in tiles.take().items()],
                columns=["level", "idx", "hashes"],
            )
            for size, root, head in checkpoints:
                signed = key.sign(note.checkpoint_body(note.Checkpoint(ORIGIN, size, root)))
                await conn.execute("INSERT INTO checkpoints VALUES ($1, $2, $3, $4, now())", size, root, head, signed)
    finally:
        await conn.close()


async def test_a_rewritten_history_re_signed_with_another_key_is_caught_through_state(
    audited: AuditedStack, tmp_path: Path
) -> None:
    s = audited
    state = tmp_path / "state.json"
    async with ledger_copy(s) as url:
        first = verify_served(s, url, "--state", str(state))
        assert first.code == 0, first.stdout + first.stderr
        # the operator erases a disclosure from history, re-signs everything
        # with a new key and tells auditors the key was rotated; genuine
        # traffic goes on, so the log is longer than the auditor remembers
        disclosure, h_patient = s.history.disclosure_event_ids[0], s.history.patient_id
        [dropped] = await rows(url, "SELECT idx FROM entries WHERE event_id = $1", disclosure)
        new_signer = note.NoteSigner.generate(ORIGIN)
        key_file, pub_file = tmp_path / "new.key", tmp_path / "new.pub"
        key_file.write_text(new_signer.signer_key + "\n")
        pub_file.write_text(new_signer.verifier_key + "\n")
        traffic = [PRODUCERS.event(consent_pb2.AccessDecided(requester_id="doctor", patient_id=h_patient,
                                                             decision=consent_pb2.DECISION_DENY), "consent", h_patient)
                   for _ in range(2)]
        await _rewrite_without(url, dropped["idx"], new_signer, traffic)
        ledger = serve_ledger(s, url, signing_key=key_file)
        fresh = audit(*verify_args(s, ledger.address, key=pub_file))
        pinned_old = audit(*verify_args(s, ledger.address))
        remembered = audit(*verify_args(s, ledger.address, "--state", str(state), key=pub_file))
        ledger.stop()
    assert fresh.code == 0, fresh.stdout  # every hash and signature checks out for an auditor with no memory
    assert pinned_old.code == 1 and findings(pinned_old.report, "checkpoint signature")
    assert remembered.code == 1, remembered.stdout
    caught = findings(remembered.report, "remembered checkpoint")
    assert caught and any("rewritten" in str(f.get("detail")) for f in caught)
    assert {f["check"] for f in remembered.report["findings"]} == {"remembered checkpoint"}
    assert any("verifier key differs" in n for n in remembered.report["notes"])
    assert json.loads(state.read_text())["tree_size"] == s.size  # a failed run does not move the state


async def test_missing_key_unreachable_ledger_and_missing_token_have_their_exit_codes(audited: AuditedStack) -> None:
    s = audited
    no_key = audit("verify", "--ledger", f"127.0.0.1:{free_port()}", "--producer-keys-file", s.producer_keys_file)
    assert no_key.code == 2 and "pinned verifier key is required" in no_key.stderr
    unreachable = audit(*verify_args(s, f"127.0.0.1:{free_port()}"))
    assert unreachable.code == 3 and "unreachable" in unreachable.stderr
    async with ledger_copy(s) as url:
        ledger = serve_ledger(s, url)
        args = verify_args(s, ledger.address)
        refused = audit(*args[:3], *args[5:])  # without --token
        ledger.stop()
    assert refused.code == 4 and "AUDITOR token" in refused.stderr


async def test_replay_reproduces_the_live_projections_and_reports_a_planted_divergence(audited: AuditedStack) -> None:
    s = audited
    identity_db, consent_db = s.env["MEDLEDGER_IDENTITY_DATABASE_URL"], s.env["MEDLEDGER_CONSENT_DATABASE_URL"]
    records_db = s.env["MEDLEDGER_RECORDS_DATABASE_URL"]
    args = ["replay", "--bootstrap", BOOTSTRAP, "--topic-prefix", s.topics.prefix, "--producer-keys-file",
            s.producer_keys_file, "--identity-database-url", identity_db, "--consent-database-url", consent_db,
            "--records-database-url", records_db, "--json", "--no-progress", "--settle-s", "5"]
    clean = audit(*args)
    assert clean.code == 0, clean.stdout + clean.stderr
    replayed = clean.report
    assert replayed["divergences"] == [] and replayed["unauthenticated"] == 0
    assert sum(replayed["events"].values()) == s.size
    # records was compared, not skipped: its tables hold what the events say
    assert await rows(records_db, "SELECT 1 FROM record_versions WHERE record_id = $1", s.history.record_id)
    indexed = await rows(records_db, "SELECT event_id FROM disclosure_index WHERE event_id = ANY($1::text[])",
                         s.history.disclosure_event_ids + s.history.decision_event_ids)
    assert len(indexed) == len(s.history.disclosure_event_ids + s.history.decision_event_ids)
    # plant: the live database forgets a revocation and a break-glass changes hands
    consent_id, glass = s.history.revoked_consent_id, s.history.break_glass_id
    [before] = await rows(consent_db, "SELECT revoked_at, revoked_by FROM consents WHERE consent_id = $1", consent_id)
    [owner] = await rows(consent_db, "SELECT practitioner_id FROM break_glass WHERE break_glass_id = $1", glass)
    await execute(consent_db, [
        ("UPDATE consents SET revoked_at = NULL, revoked_by = NULL WHERE consent_id = $1", (consent_id,)),
        ("UPDATE break_glass SET practitioner_id = 'someone-else' WHERE break_glass_id = $1", (glass,)),
    ])
    try:
        planted = audit(*args)
    finally:
        await execute(consent_db, [
            ("UPDATE consents SET revoked_at = $2, revoked_by = $3 WHERE consent_id = $1",
             (consent_id, before["revoked_at"], before["revoked_by"])),
            ("UPDATE break_glass SET practitioner_id = $2 WHERE break_glass_id = $1", (glass, owner["practitioner_id"])),
        ])
    assert planted.code == 1, planted.stdout + planted.stderr
    found = {(d["table"], d["key"], d["column"]) for d in planted.report["divergences"]}
    assert found == {("consents", consent_id, "revoked_at"), ("consents", consent_id, "revoked_by"),
                     ("break_glass", glass, "practitioner_id")}

    # plant in records: a version's author signature altered past its first bytes, a
    # disclosure-index line dropped, and records' view of a consent un-revoked
    record_id, disclosure = s.history.record_id, s.history.disclosure_event_ids[0]
    [version] = await rows(records_db, "SELECT author_signature FROM record_versions WHERE record_id = $1 AND version = 1",
                           record_id)
    [line] = await rows(records_db, "SELECT * FROM disclosure_index WHERE event_id = $1", disclosure)
    forged = bytes(version["author_signature"][:40]) + bytes(24)
    await execute(records_db, [
        ("UPDATE record_versions SET author_signature = $2 WHERE record_id = $1 AND version = 1", (record_id, forged)),
        ("DELETE FROM disclosure_index WHERE event_id = $1", (disclosure,)),
        ("UPDATE consents SET revoked = false WHERE consent_id = $1", (consent_id,)),
    ])
    try:
        planted = audit(*args)
    finally:
        await execute(records_db, [
            ("UPDATE record_versions SET author_signature = $2 WHERE record_id = $1 AND version = 1",
             (record_id, version["author_signature"])),
            ("INSERT INTO disclosure_index VALUES ($1, $2, $3, $4, $5, $6)", tuple(line.values())),
            ("UPDATE consents SET revoked = true WHERE consent_id = $1", (consent_id,)),
        ])
    assert planted.code == 1, planted.stdout + planted.stderr
    in_records = {(d["projection"], d["table"], d["key"], d.get("column", "")) for d in planted.report["divergences"]}
    assert in_records == {("records", "record_versions", f"{record_id}/1", "author_signature"),
                     ("records", "disclosure_index", disclosure, ""), ("records", "consents", consent_id, "revoked")}
    assert audit(*args).code == 0  # restored: the same again


async def test_disclosures_list_exactly_the_accesses_that_happened(audited: AuditedStack, tmp_path: Path) -> None:
    s, h = audited, audited.history
    index = tmp_path / "audit.idx"
    async with ledger_copy(s) as url:
        built = verify_served(s, url, "--index", str(index))
    assert built.code == 0, built.stdout + built.stderr
    report = audit("disclosures", "--index", str(index), "--patient", h.patient_id, "--format", "json")
    assert report.code == 0, report.stderr
    lines = json.loads(report.stdout)
    # what happened, as the topics hold it
    about = [e for e in await event_topic_envelopes(s.topics) if e.aggregate_id == h.patient_id]
    accesses = {e.event_id for e in about if e.event_type in (
        "medledger.v1.AccessDecided", "medledger.v1.BreakGlassInvoked", "medledger.v1.BreakGlassReviewed")}
    disclosed = {e.event_id for e in about if e.event_type == "medledger.v1.RecordsDisclosed"}
    assert {line["event_id"] for line in lines["accesses"]} == accesses
    assert {line["event_id"] for line in lines["disclosures"]} == disclosed == set(h.disclosure_event_ids)
    assert set(h.decision_event_ids) <= accesses
    by_id = {line["event_id"]: line for line in lines["accesses"]}
    decisions = [by_id[e] for e in h.decision_event_ids]
    assert [d["decision"] for d in decisions] == ["ALLOW", "DENY"]
    assert any(line["decision"] == "DENY" and line["index"] < decisions[0]["index"] for line in lines["accesses"])
    [glass] = [line for line in lines["accesses"] if line["kind"] == "break-glass"]
    assert glass["basis"] == h.break_glass_id and "APPROVED" in glass["review"]
    assert any(line["reason"] == "BREAK_GLASS" and line["decision"] == "ALLOW" for line in lines["accesses"])
    fhir = audit("disclosures", "--index", str(index), "--patient", h.patient_id, "--format", "fhir")
    bundle = Bundle.model_validate_json(fhir.stdout)
    assert len(bundle.entry or []) == len(accesses) + len(disclosed)
    table = audit("disclosures", "--index", str(index), "--patient", h.patient_id)
    assert table.code == 0 and "Accounting of disclosures" in table.stdout
    other = audit("disclosures", "--index", str(tmp_path / "missing.idx"), "--patient", h.patient_id)
    assert other.code == 2


async def test_a_proof_bundle_verifies_offline_and_a_tampered_one_does_not(audited: AuditedStack, tmp_path: Path) -> None:
    s, h = audited, audited.history
    bundle = tmp_path / "proof.json"
    async with ledger_copy(s) as url:
        ledger = serve_ledger(s, url)
        made = audit("prove", "--event-id", h.record_event_ids[0], "--out", str(bundle), "--ledger", ledger.address,
                     "--token", s.auditor_token(), "--verifier-key-file", str(s.verifier_key_file))
        ledger.stop()
    assert made.code == 0, made.stdout + made.stderr
    check = ["--verifier-key-file", str(s.verifier_key_file), "--producer-keys-file", s.producer_keys_file]
    good = audit("verify-proof", str(bundle), *check)
    assert good.code == 0 and "OK" in good.stdout, good.stdout + good.stderr
    # the records service serves the same format beside a record
    served = tmp_path / "served.json"
    served.write_text(proofs.to_json(ledger_pb2.ProofBundle.FromString(h.record_proof)))
    assert audit("verify-proof", str(served), *check).code == 0
    tampered = json.loads(bundle.read_text())
    tampered["inclusionProof"]["hashes"][0] = "A" * 43 + "="
    (tmp_path / "tampered.json").write_text(json.dumps(tampered))
    bad = audit("verify-proof", str(tmp_path / "tampered.json"), *check, "--json")
    assert bad.code == 1 and bad.report["valid"] is False
    other_key = tmp_path / "other.pub"
    other_key.write_text(note.NoteSigner.generate(ORIGIN).verifier_key)
    assert audit("verify-proof", str(bundle), "--verifier-key-file", str(other_key)).code == 1
