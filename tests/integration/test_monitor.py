"""The access monitor on the real broker, run as operators run it
(`medledger serve monitor`): what raises an alert, what does not, forgeries,
a crash mid-window, and every alert on the ledger with an inclusion proof.

"Nothing else fired" is never checked by waiting: after the events under test,
a marker (exactly 21 denials for a fresh requester on the same partition,
spread over every source partition) is published; once its probing alert is
on access.alerts, the monitor has counted everything published before it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Callable

import grpc

from medledger.ledger import merkle
from medledger.ledger.note import NoteSigner, NoteVerifier, open_checkpoint
from medledger.monitor.frames import frame
from medledger.monitor.observations import partition_of
from medledger.runtime.envelope import EventSigner
from medledger.runtime.kafka import delete_topics, ensure_topics, make_producer, topic_specs
from medledger.runtime.settings import Topics
from medledger.testing import monitor as m
from medledger.testing.metrics import present, scrape, value
from medledger.testing.ledger import produce, produce_raw, read_entries, stub, wait_for_checkpoint
from medledger.testing.stack import (
    BOOTSTRAP, MEDLEDGER, PRODUCERS, ServiceProcess, free_port, health_status, unique, wait_until,
)
from medledger.v1 import events_pb2, ledger_pb2, ledger_pb2_grpc, monitor_pb2

Metadata = tuple[tuple[str, str], ...]
Spawn = Callable[..., ServiceProcess]


def start_monitor(spawn: Spawn, **env: str) -> ServiceProcess:
    return spawn("monitor", MEDLEDGER_MONITOR_PORT=str(free_port()), **env)


def practitioner() -> str:
    return f"practitioner-{m.new_id()}"


async def drain(topics: Topics, *subjects: str, timeout: float = 60) -> list[tuple[bytes, events_pb2.EventEnvelope]]:
    """Publish a marker on each subject's partition; return every alert once all
    markers fired (waiting at most ``timeout`` seconds for them)."""
    markers = [m.subject_on(partition_of(s, 3)) for s in subjects]
    for marker in markers:
        await produce(m.marker(topics, marker))
    found = await m.read_alerts(topics, timeout=timeout, until=lambda f: all(m.alerts_for(f, marker) for marker in markers))
    for marker in markers:
        assert [a.rule for a in m.alerts_for(found, marker)] == [monitor_pb2.ALERT_RULE_PROBING], f"marker {marker}"
    return found


async def test_a_burst_of_reads_across_60_patients_raises_exactly_one_breadth_alert(spawn: Spawn, topics: Topics) -> None:
    start_monitor(spawn).wait_serving()
    snoop = practitioner()
    reads = [m.disclosure(topics, snoop, f"patient-{i}-{m.new_id()}", "org-1") for i in range(60)]
    await produce(reads)
    first = await m.read_alerts(topics, 1, timeout=30)  # within 30 s of the burst
    assert [m.alert_of(e).rule for _, e in first] == [monitor_pb2.ALERT_RULE_BREADTH]
    found = await drain(topics, snoop)
    (alert,) = m.alerts_for(found, snoop)
    assert (alert.rule, alert.count, alert.threshold) == (monitor_pb2.ALERT_RULE_BREADTH, 51, 50)
    read_ids = {e.event_id for _, e in reads}
    patients = {e.aggregate_id for _, e in reads}
    assert len(set(alert.triggering_event_ids)) == 51 and set(alert.triggering_event_ids) <= read_ids
    assert len(set(alert.patient_ids)) == 51 and set(alert.patient_ids) <= patients
    assert alert.window_end.seconds - alert.window_start.seconds == 3600


async def test_25_denials_raise_one_probing_alert(spawn: Spawn, topics: Topics) -> None:
    start_monitor(spawn).wait_serving()
    prober = f"requester-{m.new_id()}"
    await produce(m.probing_burst(topics, prober, 25))
    found = await drain(topics, prober)
    (alert,) = m.alerts_for(found, prober)
    assert (alert.rule, alert.count, alert.threshold) == (monitor_pb2.ALERT_RULE_PROBING, 21, 20)


async def test_a_normal_workload_of_10_practitioners_raises_none(spawn: Spawn, topics: Topics) -> None:
    start_monitor(spawn).wait_serving()
    staff = [practitioner() for _ in range(10)]
    work: list[m.Event] = []
    for person in staff:
        patients = [f"patient-{m.new_id()}" for _ in range(40)]  # 40 distinct patients in the hour: under 50
        for i in range(200):
            patient = patients[i % 40]
            work.append(m.decision(topics, person, patient, allow=True))
            work.append(m.disclosure(topics, person, patient, "org-1"))
        work += [m.decision(topics, person, f"patient-{m.new_id()}") for _ in range(15)]  # under 20 denials
        work += [m.break_glass(topics, person, patients[k], "org-1") for k in range(3)]  # 3 is allowed
    await produce(work)
    found = await drain(topics, *staff)
    assert all(e.aggregate_id not in staff for _, e in found), [m.alert_of(e) for _, e in found]
    assert len({e.event_id for _, e in found}) == len(found)


async def test_break_glass_more_than_3_times_raises_an_alert(spawn: Spawn, topics: Topics) -> None:
    start_monitor(spawn).wait_serving()
    doctor = practitioner()
    await produce([m.break_glass(topics, doctor, f"patient-{i}", "org-1") for i in range(4)])
    found = await drain(topics, doctor)
    (alert,) = m.alerts_for(found, doctor)
    assert (alert.rule, alert.count, alert.threshold) == (monitor_pb2.ALERT_RULE_BREAK_GLASS, 4, 3)


async def test_forged_and_replayed_events_raise_nothing(spawn: Spawn, topics: Topics) -> None:
    """Someone with write access to Kafka tries to frame a practitioner (forged
    reads on access.events, and straight into the monitor's repartition topic)
    or to inflate a count by replaying one genuine denial: no alert."""
    start_monitor(spawn).wait_serving()
    framed, replayed = practitioner(), practitioner()
    stranger = EventSigner.generate("records")  # the right name, a key nobody pinned
    forged = [stranger.seal(m.disclosure(topics, framed, f"patient-{i}")[1]) for i in range(60)]
    by_consent = []
    for i in range(60):
        env = m.disclosure(topics, framed, f"patient-x{i}")[1]
        by_consent.append(PRODUCERS.signers["consent"].seal(env))  # a producer not allowed to disclose
    await produce_raw(topics.access_events, forged + by_consent)
    repartition_partition = partition_of(framed, 3)
    p = make_producer(BOOTSTRAP)  # straight into the monitor's own topic, on the framed practitioner's partition
    await p.start()
    try:
        await p.send_and_wait(topics.monitor_observations, frame(forged + by_consent), partition=repartition_partition)
    finally:
        await p.stop()
    _, genuine = m.decision(topics, replayed, "patient-1")  # one genuine denial, replayed: still one
    await produce_raw(topics.access_events, [genuine.SerializeToString()] * 30)
    found = await drain(topics, framed, replayed)
    assert m.alerts_for(found, framed) == [] and m.alerts_for(found, replayed) == []


async def test_the_monitor_waits_for_its_topics_and_creates_none(spawn: Spawn) -> None:
    """The broker never auto-creates topics and faust must not either: with its
    topics missing the monitor stays NOT_SERVING; once `topics ensure` made them
    it serves, and no topic appeared that topic_specs does not declare."""
    from aiokafka.admin import AIOKafkaAdminClient

    own = Topics(unique("tm") + ".")
    monitor = start_monitor(spawn, MEDLEDGER_TOPIC_PREFIX=own.prefix)
    try:
        wait_until(lambda: "do not exist" in monitor.log_tail(80), 60, 0.2, "the monitor to report missing topics")
        assert health_status(monitor.address) == "NOT_SERVING"
        await ensure_topics(BOOTSTRAP, topic_specs(own))
        monitor.wait_serving()
        await produce(m.marker(own, m.subject_on(0)))
        assert len(await m.read_alerts(own, 1, timeout=60)) >= 1
        admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
        await admin.start()
        try:
            names = {t for t in await admin.list_topics() if t.startswith(own.prefix)}
        finally:
            await admin.close()
        assert names == {s.name for s in topic_specs(own)}
    finally:
        monitor.stop()
        await delete_topics(BOOTSTRAP, own.all)


async def test_a_crash_mid_window_neither_loses_nor_duplicates_and_alerts_are_on_the_ledger(
    spawn: Spawn, topics: Topics, auditor_metadata: Metadata, service_env: dict[str, str]
) -> None:
    ledger_proc = spawn("ledger").wait_serving()
    monitor = start_monitor(spawn).wait_serving()
    snoop = practitioner()
    await produce([m.disclosure(topics, snoop, f"patient-a{i}") for i in range(30)])
    await drain(topics, snoop)  # the first 30 reads are counted (maybe not committed yet)
    monitor.kill()
    monitor = start_monitor(spawn).wait_serving()
    await produce([m.disclosure(topics, snoop, f"patient-b{i}") for i in range(30)])
    raised = await m.read_alerts(topics, until=lambda f: bool(m.alerts_for(f, snoop)))
    (breadth,) = {e.event_id: e for _, e in raised if e.aggregate_id == snoop}.values()
    monitor.kill()  # right after the alert: faust has most likely not committed what raised it
    start_monitor(spawn).wait_serving()
    found = await drain(topics, snoop)
    mine = [(value, e) for value, e in found if e.aggregate_id == snoop]
    assert {e.event_id for _, e in mine} == {breadth.event_id}, "the crash lost or duplicated the breadth alert"
    assert len({value for value, _ in mine}) == 1, "a replayed alert must be the identical record"
    alert = m.alert_of(breadth)
    assert (alert.rule, alert.count) == (monitor_pb2.ALERT_RULE_BREADTH, 51)
    assert {p for p in alert.patient_ids} <= {f"patient-a{i}" for i in range(30)} | {f"patient-b{i}" for i in range(30)}

    # Every alert is sequenced exactly once and proves its inclusion in a checkpoint
    # signed by the ledger's key.
    values = {e.event_id: value for value, e in found}
    key_text = Path(service_env["MEDLEDGER_LEDGER_SIGNING_KEY_FILE"]).read_text().strip()
    pinned = NoteVerifier.from_verifier_key(NoteSigner.from_signer_key(key_text).verifier_key)
    channel, ledger = stub(ledger_proc.address)
    with channel:
        checkpoint = await asyncio.to_thread(_checkpoint_holding, ledger, list(values.values()))
        signed = open_checkpoint(checkpoint.checkpoint, pinned)
        entries = read_entries(ledger, signed.size, auditor_metadata)
        alert_entries = [e for e in entries if e.event_id in values]
        assert sorted(e.event_id for e in alert_entries) == sorted(values), "an alert is missing or sequenced twice"
        for entry in alert_entries:
            assert entry.event == values[entry.event_id]
            leaf = hashlib.sha256(b"\x00" + entry.event).digest()
            proof = ledger.GetInclusionProofByHash(
                ledger_pb2.GetInclusionProofByHashRequest(leaf_hash=leaf, tree_size=signed.size)
            )
            merkle.verify_inclusion(leaf, proof.leaf_index, signed.size, list(proof.hashes), signed.root)

    # And the privacy officer's view of it: `medledger audit alerts`, from the ledger.
    token = dict(auditor_metadata)["authorization"].removeprefix("Bearer ")
    listed = subprocess.run(
        [MEDLEDGER, "audit", "alerts", "--ledger", ledger_proc.address, "--token", token, "--rule", "breadth",
         "--producer-keys-file", service_env["MEDLEDGER_EVENT_PRODUCER_KEYS_FILE"], "--json"],
        capture_output=True, text=True, timeout=120, env=service_env,
    )
    assert listed.returncode == 0, listed.stderr
    lines = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(a["event_id"], a["subject_id"], a["count"]) for a in lines] == [(breadth.event_id, snoop, 51)]


def _owned_partitions(monitor: ServiceProcess, topic: str) -> set[int]:
    """The repartition partitions this replica counts, from its own lag series."""
    lags = present(scrape(monitor.metrics_url), "medledger_kafka_consumer_lag_records", reader="access monitor", topic=topic)
    return {int(s.labels["partition"]) for s in lags}


async def test_two_replicas_share_the_work_and_one_takes_over_when_the_other_is_killed(
    spawn: Spawn, topics: Topics
) -> None:
    """Two monitors in one consumer group on the real broker. A practitioner reads
    60 patients' records; after 30 are counted, the replica counting them is
    SIGKILLed; the other takes its partitions (after the 10-second session
    timeout), rebuilds the buckets from the changelog, and raises exactly one
    breadth alert: no alert lost, none with a second id."""
    replicas = [start_monitor(spawn), start_monitor(spawn)]
    for replica in replicas:
        replica.wait_serving()
    observations = topics.monitor_observations

    def split() -> bool:  # every partition counted by exactly one replica, and both have some
        owned = [_owned_partitions(r, observations) for r in replicas]
        return all(owned) and not owned[0] & owned[1] and owned[0] | owned[1] == {0, 1, 2}

    wait_until(split, 60, 0.5, "the two replicas to share the repartition topic's partitions")
    snoop = practitioner()
    (owner,) = [r for r in replicas if partition_of(snoop, 3) in _owned_partitions(r, observations)]
    (survivor,) = [r for r in replicas if r is not owner]
    counted_before = value(scrape(owner.metrics_url), "medledger_monitor_events_total", outcome="counted")
    await produce([m.disclosure(topics, snoop, f"patient-a{i}-{m.new_id()}", "org-1") for i in range(30)])
    wait_until(
        lambda: value(scrape(owner.metrics_url), "medledger_monitor_events_total", outcome="counted") >= counted_before + 30,
        30, 0.2, "the owning replica to count the first 30 reads",
    )
    owner.kill()  # mid-burst: no leave-group, so its partitions move only when its session expires
    await produce([m.disclosure(topics, snoop, f"patient-b{i}-{m.new_id()}", "org-1") for i in range(30)])
    # The marker on snoop's partition: the survivor counted everything. The
    # takeover waits out the killed member's session, a rebalance and the
    # tables' recovery from their changelogs: a loaded 2-core CI once needed
    # more than a minute for all of it.
    found = await drain(topics, snoop, timeout=240)
    wait_until(lambda: _owned_partitions(survivor, observations) == {0, 1, 2}, 30, 0.5,
               "the survivor to report every partition as its own")  # lag is measured every 5 s
    mine = [(record, e) for record, e in found if e.aggregate_id == snoop]
    assert len({e.event_id for _, e in mine}) == 1, "the takeover lost or duplicated the breadth alert"
    assert len({record for record, _ in mine}) == 1, "a replayed alert must be the identical record"
    alert = m.alert_of(mine[0][1])
    assert (alert.rule, alert.count, alert.threshold) == (monitor_pb2.ALERT_RULE_BREADTH, 51, 50)
    assert len(set(alert.patient_ids)) == 51


def _checkpoint_holding(ledger: ledger_pb2_grpc.LedgerServiceStub, values: list[bytes]) -> ledger_pb2.Checkpoint:
    """The latest signed checkpoint, once its tree holds every one of these leaves."""
    leaves = [hashlib.sha256(b"\x00" + value).digest() for value in values]
    latest = wait_for_checkpoint(ledger, 1)

    def holds_all() -> bool:
        nonlocal latest
        latest = ledger.GetCheckpoint(ledger_pb2.GetCheckpointRequest())
        for leaf in leaves:
            request = ledger_pb2.GetInclusionProofByHashRequest(leaf_hash=leaf, tree_size=latest.tree_size)
            try:
                ledger.GetInclusionProofByHash(request)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return False  # not sequenced into this checkpoint yet
                raise
        return True

    wait_until(holds_all, 60, 0.2, "every alert in a signed checkpoint")
    return latest
