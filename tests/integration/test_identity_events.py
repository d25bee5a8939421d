"""identity.events against the real broker: no PHI on the topic, the
projection rebuilt from the topic idempotently, exactly-once publication after
a crash between publishing and recording it, and the ledger sequencing it all."""

from __future__ import annotations

from typing import Callable

import asyncpg
import grpc
import pytest
from aiokafka import TopicPartition

from medledger.identity.domain import key_id_for
from medledger.runtime.envelope import envelope
from medledger.runtime.kafka import make_consumer
from medledger.runtime.settings import Topics
from medledger.v1 import events_pb2, identity_pb2, identity_pb2_grpc, ledger_pb2, ledger_pb2_grpc
from medledger.testing.identity import IdentityHarness, Party, generate_key, raw_public
from medledger.testing.ledger import produce_raw
from medledger.testing.stack import BOOTSTRAP, PRODUCERS, ServiceProcess, free_port, wait_until

pytestmark = pytest.mark.timeout(240)

PHI = identity_pb2.Demographics(
    given_name="Bartholomew", family_name="Quixotically", birth_date="1948-07-19", phone="+15550199",
    email="bart@example.org", postal_address="12 Elm Street",
)
MRN = "MRN-77-31337"


async def topic_records(topic: str) -> list[tuple[bytes, bytes]]:
    """Every (key, value) on the topic, all partitions, from offset 0."""
    consumer = make_consumer(BOOTSTRAP, group_id=None)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        if not partitions:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - test-only metadata refresh
            partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        found: list[tuple[bytes, bytes]] = []
        while any([await consumer.position(tp) < ends[tp] for tp in partitions]):
            batch = await consumer.getmany(*partitions, timeout_ms=1000)
            found += [(r.key or b"", r.value or b"") for records in batch.values() for r in records]
        return found
    finally:
        await consumer.stop()


def populate(ids: IdentityHarness) -> list[Party]:
    """Some of everything: every event type at least once."""
    org = ids.organization()
    patient = ids.patient(org, demographics=PHI, medical_record_number=MRN)
    doc = ids.practitioner(org)
    auditor = ids.auditor(org)
    ids.grant_membership(ids.organization("CLINIC"), doc, "nurse", accepted=True)  # on doc's signed acceptance
    stub = ids.stub
    stub.RotateKey(identity_pb2.RotateKeyRequest(identity_id=doc.identity_id, public_key=raw_public(generate_key())),
                   metadata=org.metadata)
    stub.RevokeKey(identity_pb2.RevokeKeyRequest(identity_id=doc.identity_id, key_id=doc.key_id), metadata=org.metadata)
    membership = stub.GetIdentity(identity_pb2.GetIdentityRequest(identity_id=doc.identity_id), metadata=org.metadata).memberships[0]
    stub.EndMembership(identity_pb2.EndMembershipRequest(membership_id=membership.membership_id), metadata=org.metadata)
    stub.RevokeIdentity(identity_pb2.RevokeIdentityRequest(identity_id=auditor.identity_id,
                                                           reason=identity_pb2.AFFILIATION_CHANGED),
                        metadata=ids.operator.metadata)
    return [ids.operator, org, patient, doc, auditor]


def public_view(ids: IdentityHarness, address: str, party: Party) -> identity_pb2.Identity:
    with grpc.insecure_channel(address) as channel:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        seen = stub.GetIdentity(identity_pb2.GetIdentityRequest(identity_id=party.identity_id),
                                metadata=ids.operator.metadata, timeout=10)
    seen.ClearField("demographics")
    return seen


async def test_no_demographics_or_mrn_on_the_topic(identity_service: IdentityHarness, topics: Topics) -> None:
    populate(identity_service)
    records = await topic_records(topics.identity_events)
    types = set()
    for key, value in records:
        for secret in (PHI.given_name, PHI.family_name, PHI.birth_date, PHI.phone, PHI.email, PHI.postal_address, MRN):
            assert secret.encode() not in value and secret.encode() not in key
        env = events_pb2.EventEnvelope.FromString(value)
        assert env.producer == "identity" and key == env.aggregate_id.encode()
        types.add(env.event_type.rsplit(".", 1)[1])
    assert types == {
        "IdentityRegistered", "KeyRotated", "KeyRevoked", "IdentityRevoked", "MembershipGranted", "MembershipEnded"
    }


async def applied_count(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM applied_events"))
    finally:
        await conn.close()


async def test_a_fresh_database_is_rebuilt_from_the_topic_idempotently(
    identity_service: IdentityHarness,
    spawn: Callable[..., ServiceProcess],
    topics: Topics,
    database_factory: Callable[[str], str],
) -> None:
    ids = identity_service
    parties = populate(ids)
    before = {p.identity_id: public_view(ids, ids.address, p) for p in parties}
    events = len(await topic_records(topics.identity_events))
    fresh_db = database_factory("identity_rebuilt")
    port = str(free_port())
    rebuilt = spawn("identity", MEDLEDGER_IDENTITY_DATABASE_URL=fresh_db, MEDLEDGER_IDENTITY_PORT=port, **ids.env)
    rebuilt.wait_serving()
    for p in parties:
        assert public_view(ids, rebuilt.address, p) == before[p.identity_id]
    assert await applied_count(fresh_db) == events
    # restarting replays nothing twice and publishes nothing new
    assert rebuilt.stop() == 0
    again = spawn("identity", MEDLEDGER_IDENTITY_DATABASE_URL=fresh_db, MEDLEDGER_IDENTITY_PORT=port, **ids.env)
    again.wait_serving()
    assert await applied_count(fresh_db) == events
    assert len(await topic_records(topics.identity_events)) == events
    for p in parties:
        assert public_view(ids, again.address, p) == before[p.identity_id]


async def test_a_crash_after_publishing_does_not_publish_twice(
    identity_service: IdentityHarness, spawn: Callable[..., ServiceProcess], topics: Topics, service_env: dict[str, str]
) -> None:
    ids = identity_service
    populate(ids)
    events = len(await topic_records(topics.identity_events))
    assert ids.process is not None
    ids.process.kill()
    url = service_env["MEDLEDGER_IDENTITY_DATABASE_URL"]
    conn = await asyncpg.connect(url)
    try:
        placed = await conn.fetch('SELECT event_id, partition, "offset" FROM outbox ORDER BY seq')
        assert len(placed) == events
        # as if the relay died after the broker acknowledged and before it recorded that
        await conn.execute('UPDATE outbox SET published_at = NULL, partition = NULL, "offset" = NULL')
    finally:
        await conn.close()
    restarted = spawn("identity", **ids.env).wait_serving()
    conn = await asyncpg.connect(url)
    try:  # SERVING means the relay has reconciled with the topic
        again = await conn.fetch('SELECT event_id, partition, "offset" FROM outbox ORDER BY seq')
    finally:
        await conn.close()
    assert [tuple(r) for r in again] == [tuple(r) for r in placed]
    assert len(await topic_records(topics.identity_events)) == events
    # and it still works
    assert IdentityHarness(restarted.address, ids.operator.private_key).organization().token


def test_the_ledger_sequences_identity_events(
    identity_service: IdentityHarness, spawn: Callable[..., ServiceProcess]
) -> None:
    ids = identity_service
    parties = populate(ids)
    event_ids = [e for p in parties for e in p.event_ids]
    assert len(event_ids) >= 5
    ledger = spawn("ledger").wait_serving()
    auditor = ids.auditor()
    with grpc.insecure_channel(ledger.address) as channel:
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)

        def sequenced(event_id: str) -> bool:
            try:
                entry = stub.GetEntryByEventId(
                    ledger_pb2.GetEntryByEventIdRequest(event_id=event_id), metadata=auditor.metadata, timeout=5
                )
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return False
                raise
            return bool(events_pb2.EventEnvelope.FromString(entry.event).event_id == event_id)

        for event_id in event_ids:
            wait_until(lambda: sequenced(event_id), 60, 0.2, f"ledger entry for {event_id}")


async def test_forged_identity_events_are_never_applied(
    identity_service: IdentityHarness,
    spawn: Callable[..., ServiceProcess],
    topics: Topics,
    database_factory: Callable[[str], str],
) -> None:
    """An attacker with write access to identity.events publishes a rotation of
    the operator's key to its own key, forged every way it can be. A database
    rebuilt from the topic ignores every forgery; the same event signed with
    the identity service's key (the control) is applied."""
    ids = identity_service
    org = ids.organization()
    before = public_view(ids, ids.address, ids.operator)
    genuine_count = len(await topic_records(topics.identity_events))
    attacker_key = raw_public(generate_key())
    rotation = identity_pb2.KeyRotated(
        identity_id=ids.operator.identity_id, key_id=key_id_for(attacker_key), public_key=attacker_key,
        previous_key_id=ids.operator.key_id,
    )
    genuine = envelope(rotation, aggregate_id=ids.operator.identity_id, producer="identity")
    forged = PRODUCERS.forgeries(genuine, not_allowed="consent")
    await produce_raw(topics.identity_events, forged.values(), key=ids.operator.identity_id)

    def rebuild() -> ServiceProcess:
        fresh = database_factory("identity_rebuilt")
        return spawn("identity", MEDLEDGER_IDENTITY_DATABASE_URL=fresh, MEDLEDGER_IDENTITY_PORT=str(free_port()),
                     **ids.env).wait_serving()

    rebuilt = rebuild()
    assert public_view(ids, rebuilt.address, ids.operator) == before
    assert public_view(ids, rebuilt.address, org) == public_view(ids, ids.address, org)
    assert await applied_count(rebuilt.env["MEDLEDGER_IDENTITY_DATABASE_URL"]) == genuine_count
    rebuilt.stop()
    # the control: signed by the identity service's own key, the rotation applies
    await produce_raw(topics.identity_events, [PRODUCERS.seal(genuine)], key=ids.operator.identity_id)
    controlled = rebuild()
    keys = public_view(ids, controlled.address, ids.operator).keys
    assert key_id_for(attacker_key) in {k.key_id for k in keys}
