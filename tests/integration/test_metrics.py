"""Every service's /metrics, scraped as Prometheus does (prometheus-client's
text parser), while the four services and the access monitor run as real
processes against the real Kafka and PostgreSQL: the counters and histograms move with real calls and
events, what an operator's alerts and dashboard ask for is exported, and no
label (nor any other byte of the exposition) carries an id from the test data.

One network serves the whole module: starting four services is the expensive
part, and each test reads a different side of the same scenario."""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from medledger.runtime.kafka import topic_specs
from medledger.runtime.settings import Topics
from medledger.testing import monitor as m
from medledger.testing.consent import consent_env, grant_request, terms
from medledger.testing.identity import IdentityHarness, Party, generate_key, identity_env
from medledger.testing.ledger import produce, produce_raw, sample_events, stub, wait_for_checkpoint
from medledger.testing.records import create_request, observation, records_env
from medledger.testing.metrics import PROMETHEUS_SERIES, Sample, exposition, parse, present, promql_names, value
from medledger.testing.stack import ROOT, ServiceProcess, free_port, isolated_environment, wait_until
from medledger.v1 import consent_pb2 as pb
from medledger.v1 import consent_pb2_grpc, ledger_pb2, records_pb2, records_pb2_grpc

MONITORING = ROOT / "k8s" / "components" / "monitoring"
SERVICES = ("identity", "consent", "records", "ledger")
PROCESSES = (*SERVICES, "monitor")  # the access monitor: no database, faust on Kafka
CONSENT = "medledger.v1.ConsentService"
JUSTIFICATION = "unconscious after a fall; penicillin allergy suspected"
LEDGER_EVENTS = 30
# Every label name a MedLedger metric may carry (the process and Python
# collectors' own included). A new one must be as harmless as these.
ALLOWED_LABELS = {
    "grpc_service", "grpc_method", "grpc_type", "grpc_code", "le", "reader", "topic", "partition", "state", "work",
    "purpose", "decision", "reason", "operation", "category", "service", "implementation", "major", "minor", "patchlevel", "version",
    "generation", "rule", "outcome",
}


@dataclass
class Network:
    processes: dict[str, ServiceProcess]
    topics: Topics
    before: dict[str, list[Sample]] = field(default_factory=dict)
    after: dict[str, list[Sample]] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)  # the last raw exposition of each
    ids: set[str] = field(default_factory=set)  # every id and free text the scenario used
    decisions: list[pb.AccessDecision] = field(default_factory=list)
    ledger_size: tuple[int, int] = (0, 0)  # checkpoint tree size before and after the ledger's part
    reviewed: list[Sample] = field(default_factory=list)  # consent, once the break-glass was reviewed

    def scrape(self, name: str) -> list[Sample]:
        self.texts[name] = exposition(self.processes[name].metrics_url)
        return parse(self.texts[name])

    def delta(self, service: str, name: str, **labels: str) -> float:
        return value(self.after[service], name, **labels) - value(self.before[service], name, **labels)


def sequenced_partitions(topics: Topics) -> set[tuple[str, str]]:
    """(topic, partition) of every partition the ledger sequences."""
    return {(s.name, str(p)) for s in topic_specs(topics) if s.name in topics.event_topics for p in range(s.partitions)}


def _remember(network: Network, *parties: Party) -> None:
    for p in parties:
        network.ids.update([p.identity_id, p.key_id, *p.event_ids])


@pytest.fixture(scope="module")
async def network(stack: None, producer_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Network]:
    run_dir = tmp_path_factory.mktemp("metrics")
    processes: dict[str, ServiceProcess] = {}
    async with isolated_environment("tm", producer_env, run_dir, "test.medledger.local/ledger") as (env, topics):

        def start(name: str, **extra: str) -> ServiceProcess:
            port = int(env[f"MEDLEDGER_{name.upper()}_PORT"])
            processes[name] = ServiceProcess(name, dict(env, **extra), port, run_dir / f"{name}.log").start()
            return processes[name]

        harness: IdentityHarness | None = None
        try:
            operator_key = generate_key()
            id_env = identity_env(run_dir, operator_key)
            start("identity", **id_env).wait_serving()
            network = Network(processes, topics)
            network.before["identity"] = network.scrape("identity")
            harness = IdentityHarness(processes["identity"].address, operator_key, processes["identity"], id_env)
            consent_settings = consent_env(harness, run_dir)
            records_settings = records_env(harness, run_dir, env)
            network.ids.update([consent_settings["MEDLEDGER_CONSENT_IDENTITY_ID"],
                                records_settings["MEDLEDGER_RECORDS_IDENTITY_ID"]])
            env["MEDLEDGER_MONITOR_PORT"] = str(free_port())
            for name, extra in (("consent", consent_settings), ("ledger", {}), ("records", records_settings),
                                ("monitor", {})):
                start(name, **extra)
            for name in ("consent", "ledger", "records", "monitor"):
                processes[name].wait_serving()
            network.before["monitor"] = network.scrape("monitor")
            await _scenario(network, harness)
            yield network
        finally:
            if harness is not None:
                harness.close()
            for proc in processes.values():
                proc.stop()


async def _scenario(network: Network, identity: IdentityHarness) -> None:
    """Calls and events on every service, with a scrape before and after."""
    org = identity.organization()
    patient, other_patient = identity.patient(org), identity.patient(org)
    doc = identity.practitioner(org)
    _remember(network, identity.operator, org, patient, other_patient, doc)
    network.after["identity"] = network.scrape("identity")

    # consent: a grant, decisions of each kind, a caller without a token, a break-glass
    network.before["consent"] = network.scrape("consent")
    consent_stub = consent_pb2_grpc.ConsentServiceStub(grpc.insecure_channel(network.processes["consent"].address))
    t = terms(patient.identity_id, doc.identity_id, signer_key_id=patient.key_id, purposes=[pb.PURPOSE_TREATMENT])
    granted = consent_stub.GrantConsent(grant_request(patient.private_key, t), metadata=patient.metadata, timeout=15)
    network.ids.update([granted.terms.consent_id, granted.granted_event_id])

    def check(purpose: pb.Purpose.ValueType) -> pb.AccessDecision:
        request = pb.CheckAccessRequest(patient_id=patient.identity_id, purpose=purpose, category="Observation")
        decision = consent_stub.CheckAccess(request, metadata=doc.metadata, timeout=5)  # the reader's own token
        network.ids.add(decision.decision_event_id)
        network.decisions.append(decision)
        return decision

    check(pb.PURPOSE_TREATMENT), check(pb.PURPOSE_TREATMENT), check(pb.PURPOSE_RESEARCH)
    with pytest.raises(grpc.RpcError) as refused:
        consent_stub.CheckAccess(pb.CheckAccessRequest(patient_id=patient.identity_id, purpose=pb.PURPOSE_TREATMENT,
                                                       category="Observation"), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    glass = consent_stub.InvokeBreakGlass(
        pb.InvokeBreakGlassRequest(patient_id=other_patient.identity_id, justification=JUSTIFICATION,
                                   reason=pb.BREAK_GLASS_REASON_LIFE_THREATENING),
        metadata=doc.metadata, timeout=15,
    )
    network.ids.update([glass.break_glass_id, JUSTIFICATION])

    def consent_settled() -> bool:
        samples = network.after["consent"] = network.scrape("consent")
        return (value(samples, "medledger_consent_break_glass_pending_review") == 1
                and value(samples, "medledger_consent_unrecorded_decisions") == 0
                and value(samples, "medledger_outbox_unpublished_events") == 0)

    wait_until(consent_settled, 30, 0.1, "consent's break-glass review count and its events on Kafka")
    # The organization it was made under reviews it: counted by outcome, no longer pending.
    consent_stub.ReviewBreakGlass(
        pb.ReviewBreakGlassRequest(break_glass_id=glass.break_glass_id, outcome=pb.REVIEW_STATUS_APPROVED,
                                   note=f"reviewed {JUSTIFICATION}"),
        metadata=org.metadata, timeout=15,
    )

    def review_settled() -> bool:
        network.reviewed = network.scrape("consent")
        return (value(network.reviewed, "medledger_consent_break_glass_pending_review") == 0
                and value(network.reviewed, "medledger_outbox_unpublished_events") == 0)

    wait_until(review_settled, 30, 0.1, "consent's break-glass review count after the review")

    # records: a write and a read under the consent (the read asks consent and records a disclosure)
    network.before["records"] = network.scrape("records")
    record_id = str(uuid.uuid4())
    network.ids.add(record_id)
    with grpc.insecure_channel(network.processes["records"].address) as records_channel:
        records = records_pb2_grpc.RecordsServiceStub(records_channel)
        write = create_request(doc.private_key, record_id=record_id, patient_id=patient.identity_id,
                               organization_id=org.identity_id, author_id=doc.identity_id, author_key_id=doc.key_id,
                               resource=observation(patient.identity_id, marker=JUSTIFICATION))
        network.ids.add(records.CreateRecord(write, metadata=doc.metadata, timeout=20).event_id)
        read = records.GetRecord(records_pb2.GetRecordRequest(record_id=record_id, purpose=pb.PURPOSE_TREATMENT),
                                 metadata=doc.metadata, timeout=20)
        network.ids.update(read.disclosure_event_ids)
        assert read.record.record_id == record_id and len(read.disclosure_event_ids) == 1

    def records_published() -> bool:
        """The write's event and the read's disclosure are on Kafka, and the
        decision consent took for the read too: nothing more is on its way."""
        samples = network.scrape("records")
        on_kafka = {s.labels["topic"] for s in present(samples, "medledger_outbox_published_events_total") if s.value}
        decided = value(network.scrape("consent"), "medledger_consent_unrecorded_decisions") == 0
        return on_kafka == {network.topics.records_events, network.topics.access_events} and decided

    wait_until(records_published, 30, 0.1, "the records service's events on Kafka")

    # ledger: everything so far sequenced and checkpointed, then events and one forgery
    sequenced = sequenced_partitions(network.topics)
    channel, ledger = stub(network.processes["ledger"].address)
    with channel:
        def ledger_idle() -> bool:
            samples = network.scrape("ledger")
            lags = present(samples, "medledger_kafka_consumer_lag_records", reader="ledger sequencer")
            return (len(lags) == len(sequenced) and all(s.value == 0 for s in lags)
                    and value(samples, "medledger_ledger_pending_records") == 0
                    and value(samples, "medledger_ledger_tree_size") == value(samples, "medledger_ledger_checkpoint_tree_size"))

        idle_since: list[float] = []

        def ledger_settled() -> bool:
            """Idle on two looks at least 0.3 s apart: the broker holds the
            sequencer's fetch up to 25 ms to gather events (docs/architecture.md,
            Consumers and positions), and an event held there is not yet in
            the ledger's lag, so one idle look right after a publish proves nothing."""
            if not ledger_idle():
                idle_since.clear()
                return False
            if not idle_since:
                idle_since.append(time.monotonic())
            return time.monotonic() - idle_since[0] >= 0.3

        try:
            wait_until(ledger_settled, 60, 0.1, "the ledger to sequence and checkpoint everything published so far")
        except AssertionError:
            shown = [s for s in network.scrape("ledger") if s.name.startswith(("medledger_ledger", "medledger_kafka"))]
            raise AssertionError(f"the ledger did not settle: {shown}") from None
        network.before["ledger"] = network.scrape("ledger")
        start = ledger.GetCheckpoint(ledger_pb2.GetCheckpointRequest(), timeout=5).tree_size
        events = sample_events(LEDGER_EVENTS, network.topics, start=1000)
        network.ids.update(e.event_id for _, e in events)
        await produce(events)
        await produce_raw(network.topics.access_events, [b"\xff\x00 not an envelope"])
        end = wait_for_checkpoint(ledger, start + LEDGER_EVENTS).tree_size
        idle_since.clear()
        wait_until(ledger_settled, 60, 0.1, "the ledger to settle after the new events")
        network.after["ledger"] = network.scrape("ledger")
        network.ledger_size = (start, end)

    # records: health checks and a method it does not have are counted too
    with grpc.insecure_channel(network.processes["records"].address) as records_channel:
        health = health_pb2_grpc.HealthStub(records_channel)
        for _ in range(2):
            health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        with pytest.raises(grpc.RpcError) as unknown:
            records_channel.unary_unary(f"/medledger.v1.RecordsService/{patient.identity_id}")(b"", timeout=5)
        assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
    network.after["records"] = network.scrape("records")
    network.after["identity"] = network.scrape("identity")

    # monitor: it counted the scenario's denial, read and break-glass; a probing burst by
    # another requester raises one alert
    prober = f"requester-{m.new_id()}"
    burst = m.probing_burst(network.topics, prober, 21)
    network.ids.update([prober, *(e.event_id for _, e in burst), *(e.aggregate_id for _, e in burst)])
    await produce(burst)

    def monitor_alerted() -> bool:
        network.after["monitor"] = network.scrape("monitor")
        lags = present(network.after["monitor"], "medledger_kafka_consumer_lag_records", reader="access monitor")
        return network.delta("monitor", "medledger_monitor_alerts_total", rule="probing") >= 1 and bool(lags)

    wait_until(monitor_alerted, 60, 0.1, "the monitor's probing alert and its lag in its metrics")


# ---- counters and histograms move with real calls and events ---------------------------------------


def test_grpc_calls_are_counted_by_method_and_status_with_latency(network: Network) -> None:
    n = network
    check = {"grpc_service": CONSENT, "grpc_method": "CheckAccess", "grpc_type": "unary"}
    assert n.delta("consent", "grpc_server_handled_total", **check, grpc_code="OK") == 3
    assert n.delta("consent", "grpc_server_handled_total", **check, grpc_code="UNAUTHENTICATED") == 1
    assert n.delta("consent", "grpc_server_handling_seconds_count", **check) == 4
    assert n.delta("consent", "grpc_server_handling_seconds_bucket", **check, le="+Inf") == 4
    assert n.delta("consent", "grpc_server_handling_seconds_sum", **check) > 0
    assert n.delta("consent", "grpc_server_handled_total", grpc_method="GrantConsent", grpc_code="OK") == 1
    assert n.delta("consent", "grpc_server_handled_total", grpc_method="InvokeBreakGlass", grpc_code="OK") == 1
    # consent's and records' SERVICE identities, the organization, two patients, the practitioner
    assert n.delta("identity", "grpc_server_handled_total", grpc_method="RegisterIdentity", grpc_code="OK") == 6
    assert n.delta("identity", "grpc_server_handled_total", grpc_method="IssueToken", grpc_code="OK") >= 6
    health = {"grpc_service": "grpc.health.v1.Health", "grpc_method": "Check", "grpc_code": "OK"}
    assert n.delta("records", "grpc_server_handled_total", **health) == 2
    unknown = {"grpc_service": "unknown", "grpc_method": "unknown", "grpc_code": "UNIMPLEMENTED"}
    assert n.delta("records", "grpc_server_handled_total", **unknown) == 1
    for name in SERVICES:
        (info,) = present(n.after[name], "medledger_service_info")
        assert info.labels["service"] == name


def test_consent_counts_decisions_and_reports_staleness_and_break_glass(network: Network) -> None:
    n = network
    allow, deny = n.decisions[0], n.decisions[2]
    assert (allow.decision, deny.decision) == (pb.DECISION_ALLOW, pb.DECISION_DENY)
    allowed = {"purpose": "TREATMENT", "decision": "ALLOW", "reason": pb.DecisionReason.Name(allow.reason).removeprefix("REASON_")}
    denied = {"purpose": "RESEARCH", "decision": "DENY", "reason": pb.DecisionReason.Name(deny.reason).removeprefix("REASON_")}
    assert n.delta("consent", "medledger_consent_decisions_total", **allowed) == 2
    assert n.delta("consent", "medledger_consent_decisions_total", **denied) == 1
    assert n.delta("consent", "medledger_consent_decisions_total") == 3  # the refused caller got no decision
    assert n.delta("consent", "medledger_consent_break_glass_invoked_total", reason="LIFE_THREATENING") == 1
    after = n.after["consent"]
    assert value(after, "medledger_consent_break_glass_pending_review") == 1
    assert value(after, "medledger_consent_break_glass_oldest_pending_review_age_seconds") >= 0
    staleness = value(after, "medledger_consent_projection_staleness_seconds")
    assert 0 <= staleness <= value(after, "medledger_consent_max_staleness_seconds") == 0.5
    assert value(after, "medledger_consent_projection_consents") == 1


def test_ledger_counts_entries_batches_rejects_and_checkpoints(network: Network) -> None:
    n = network
    start, end = n.ledger_size
    assert end - start == LEDGER_EVENTS
    assert n.delta("ledger", "medledger_ledger_entries_sequenced_total") == LEDGER_EVENTS
    assert n.delta("ledger", "medledger_ledger_rejected_total", reason="not_an_envelope") == 1
    assert n.delta("ledger", "medledger_ledger_rejected_total") == 1
    assert n.delta("ledger", "medledger_ledger_batch_records_sum") == LEDGER_EVENTS + 1
    assert n.delta("ledger", "medledger_ledger_batch_records_count") >= 1
    assert n.delta("ledger", "medledger_ledger_checkpoints_signed_total") >= 1
    after = n.after["ledger"]
    assert value(after, "medledger_ledger_tree_size") == value(after, "medledger_ledger_checkpoint_tree_size") == end
    age = value(after, "medledger_ledger_checkpoint_age_seconds")
    assert math.isfinite(age) and age >= 0
    assert value(after, "medledger_ledger_pending_records") == 0


def test_records_counts_writes_reads_and_disclosures_by_category(network: Network) -> None:
    n = network
    assert n.delta("records", "medledger_records_written_total", operation="CreateRecord", category="Observation") == 1
    assert n.delta("records", "medledger_records_served_total", operation="GetRecord", category="Observation") == 1
    assert n.delta("records", "medledger_records_disclosures_total", operation="GetRecord") == 1
    # the read's two calls, timed as records waited for them (the custodian's own read: consent was not asked)
    waited = "medledger_records_peer_call_seconds_count"
    assert n.delta("records", waited, grpc_service="medledger.v1.LedgerService", grpc_method="GetProofBundle") == 1
    assert n.delta("records", waited, grpc_service="medledger.v1.ConsentService", grpc_method="CheckAccess") == 0
    assert n.delta("records", "grpc_server_handled_total", grpc_method="CreateRecord", grpc_code="OK") == 1
    assert n.delta("records", "medledger_outbox_published_events_total", topic=n.topics.access_events) == 1


def test_a_break_glass_review_is_counted_by_outcome(network: Network) -> None:
    n = network
    reviews = "medledger_consent_break_glass_reviews_total"
    assert value(n.reviewed, reviews, outcome="APPROVED") - value(n.before["consent"], reviews, outcome="APPROVED") == 1
    assert value(n.reviewed, reviews, outcome="INAPPROPRIATE") == value(n.before["consent"], reviews, outcome="INAPPROPRIATE")
    assert {s.labels["outcome"] for s in present(n.reviewed, reviews)} == {"APPROVED", "INAPPROPRIATE"}
    assert value(n.reviewed, "medledger_consent_break_glass_pending_review") == 0


def test_the_monitor_counts_events_alerts_and_its_lag(network: Network) -> None:
    n, t = network, network.topics
    assert n.delta("monitor", "medledger_monitor_alerts_total", rule="probing") == 1
    assert n.delta("monitor", "medledger_monitor_alerts_total", rule="breadth") == 0
    # The scenario's RESEARCH denial, its read and its break-glass, and the 21 denials.
    assert n.delta("monitor", "medledger_monitor_events_total", outcome="counted") == 3 + 21
    assert n.delta("monitor", "medledger_monitor_events_total", outcome="unauthenticated") == 0
    assert n.delta("monitor", "medledger_monitor_events_total", outcome="future") == 0
    lags = present(n.after["monitor"], "medledger_kafka_consumer_lag_records", reader="access monitor")
    assert {s.labels["topic"] for s in lags} == {t.access_events, t.consent_events, t.monitor_observations}
    assert value(n.after["monitor"], "medledger_serving") == 1
    (info,) = present(n.after["monitor"], "medledger_service_info")
    assert info.labels["service"] == "monitor"


def test_kafka_lag_outbox_pool_and_leadership(network: Network) -> None:
    n, t = network, network.topics
    sequencer = present(n.after["ledger"], "medledger_kafka_consumer_lag_records", reader="ledger sequencer")
    assert {(s.labels["topic"], s.labels["partition"]) for s in sequencer} == sequenced_partitions(t)
    projection = present(n.after["consent"], "medledger_kafka_consumer_lag_records", reader="consent projection")
    assert {s.labels["topic"] for s in projection} == {t.consent_events, t.identity_events}
    indices = present(n.after["consent"], "medledger_kafka_consumer_lag_records", reader="consent ledger indices")
    assert {s.labels["topic"] for s in indices} == {t.ledger_entries}
    assert n.delta("consent", "medledger_outbox_published_events_total", topic=t.consent_events) == 2
    assert n.delta("identity", "medledger_outbox_published_events_total", topic=t.identity_events) >= 7
    for name in ("identity", "consent"):
        assert value(n.after[name], "medledger_outbox_unpublished_events") == 0
    leaders = {("ledger", "ledger sequencer"), ("consent", "consent outbox relay"), ("consent", "consent housekeeping"),
               ("identity", "identity outbox relay")}
    for name, work in leaders:
        assert value(n.after[name], "medledger_leader", work=work) == 1, (name, work)
    for name in SERVICES:
        assert value(n.after[name], "medledger_postgres_pool_max_connections") == 10
        assert present(n.after[name], "medledger_postgres_pool_connections", state="in_use")
        assert value(n.after[name], "medledger_serving") == 1


# ---- privacy and cardinality ------------------------------------------------------------------------


def test_no_label_value_or_byte_of_the_metrics_is_an_id_from_the_test_data(network: Network) -> None:
    ids = {i for i in network.ids if len(i) >= 8}
    assert len(ids) >= 20, "the scenario should have produced ids to look for"
    for name in PROCESSES:
        labels = {k: v for s in network.after[name] for k, v in s.labels.items()}
        assert set(labels) <= ALLOWED_LABELS, f"{name}: unexpected label names {set(labels) - ALLOWED_LABELS}"
        values = {v for s in network.after[name] for v in s.labels.values()}
        assert not {v for v in values for i in ids if i in v}, f"{name} labels an id"
        text = network.texts[name]
        assert not [i for i in ids if i in text], f"{name}'s /metrics shows an id or free text"


# ---- alerts and the dashboard ask for what the services export ---------------------------------------


def _exported(network: Network) -> set[str]:
    return {s.name for samples in network.after.values() for s in samples}


def test_every_alert_names_metrics_the_services_export(network: Network) -> None:
    (rule,) = yaml.safe_load_all((MONITORING / "prometheusrule.yaml").read_text())
    exported = _exported(network)
    alerts = [r for group in rule["spec"]["groups"] for r in group["rules"] if "alert" in r]
    assert len(alerts) >= 8
    # The monitor's and the records rpcs' alerts are among them: the scrape includes those processes.
    assert {"MedLedgerAccessAlertRaised", "MedLedgerMonitorStuck", "MedLedgerRecordsErrors",
            "MedLedgerBreakGlassInappropriate"} <= {a["alert"] for a in alerts}
    assert {"monitor", "records"} <= set(network.after)
    for alert in alerts:
        names = promql_names(alert["expr"])
        assert names, f"{alert['alert']} names no metric"
        missing = names - PROMETHEUS_SERIES - exported
        assert not missing, f"{alert['alert']} asks for {missing}, which no service exports"


def test_every_dashboard_query_names_metrics_the_services_export(network: Network) -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exported = _exported(network)
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(queries) >= 10
    for expr in queries:
        names = promql_names(expr)
        assert names and not names - PROMETHEUS_SERIES - exported, f"{expr!r} asks for {names - exported}"

