"""Two records replicas on one database, as k8s/base/records.yaml runs them,
behind one client connection (docs/architecture.md, Outbox; the client's
round robin, services/client/connection.py): calls spread over both, a write
answered by the replica whose relay stands by is published like any other,
and when the replica that publishes dies the other takes over, with every
write's event on records.events exactly once."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path
from typing import Callable

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medledger.client import Connection, Endpoints, Purpose, raw_public_key
from medledger.testing.consent import consent_env, read_topic
from medledger.testing.identity import IdentityHarness
from medledger.testing.metrics import scrape, value
from medledger.testing.records import observation, records_env
from medledger.testing.stack import ServiceProcess, all_serving, free_port, wait_until
from medledger.runtime.settings import Topics
from medledger.v1 import records_pb2

WRITES_EACH_PHASE = 8


def creates_answered(replica: ServiceProcess) -> float:
    return value(scrape(replica.metrics_url), "grpc_server_handled_total", grpc_method="CreateRecord", grpc_code="OK")


def publishes(replica: ServiceProcess) -> bool:
    return value(scrape(replica.metrics_url), "medledger_leader", work="records outbox relay") == 1.0


async def test_two_replicas_share_the_writes_and_the_survivor_publishes_every_one_once(
    identity_service: IdentityHarness, spawn: Callable[..., ServiceProcess], service_env: dict[str, str],
    topics: Topics, tmp_path: Path,
) -> None:
    consent = spawn("consent", **consent_env(identity_service, tmp_path))
    ledger = spawn("ledger")
    shared = records_env(identity_service, tmp_path, service_env)  # one service identity and key-encryption key
    replicas = [spawn("records", **shared), spawn("records", MEDLEDGER_RECORDS_PORT=str(free_port()), **shared)]
    all_serving(consent, ledger, *replicas)
    wait_until(lambda: sum(publishes(r) for r in replicas) == 1, 30, what="one replica's relay leading")
    leader = next(r for r in replicas if publishes(r))
    survivor = next(r for r in replicas if r is not leader)

    target = "ipv4:" + ",".join(r.address for r in replicas)
    endpoints = Endpoints(identity_service.address, consent.address, target, ledger.address)
    org = identity_service.organization()
    with Connection(endpoints) as connection:
        hospital = connection.login(org.identity_id, org.private_key)
        key = Ed25519PrivateKey.generate()
        doctor_id = hospital.identity.register_practitioner(raw_public_key(key)).identity_id
        hospital.identity.grant_membership(doctor_id, org.identity_id)
        doctor = connection.login(doctor_id, key)
        patient_id = hospital.identity.register_patient(raw_public_key(Ed25519PrivateKey.generate())).identity_id

        def write(i: int) -> records_pb2.RecordReceipt:
            return doctor.records.create(patient_id, observation(patient_id, f"replica test {i}"),
                                         organization_id=org.identity_id, record_id=str(uuid.uuid4()))

        receipts = [write(i) for i in range(WRITES_EACH_PHASE)]
        # round robin: both replicas answered writes, the standby's among them
        assert creates_answered(leader) > 0 and creates_answered(survivor) > 0

        leader.kill()
        wait_until(lambda: publishes(survivor), 30, what="the surviving replica's relay taking the lead")
        for i in range(WRITES_EACH_PHASE, 2 * WRITES_EACH_PHASE):
            # the channel stops picking the dead replica once it sees the
            # connection gone; a call it had already routed there fails
            # UNAVAILABLE before reaching any service, and is sent again
            for _attempt in range(5):
                try:
                    receipts.append(write(i))
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            else:
                raise AssertionError("the surviving replica never answered")
        # every later write was answered by the survivor
        assert creates_answered(survivor) >= WRITES_EACH_PHASE

        for receipt in receipts:  # each readable through whichever replica answers
            assert doctor.records.get(receipt.record_id, purpose=Purpose.TREATMENT).record.record_id == receipt.record_id

    on_topic = Counter(env.event_id for env in await read_topic(topics.records_events)
                       if env.event_type == "medledger.v1.RecordCreated")
    assert {r.event_id for r in receipts} <= set(on_topic), "a write's event never reached records.events"
    assert all(on_topic[r.event_id] == 1 for r in receipts), "a write's event was published twice"
