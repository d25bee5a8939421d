"""Access-monitor benchmark against the real Kafka (docs/architecture.md,
Performance targets: >= 5,000 access events/s with alerts within 5 s of the
triggering event).

The workload is what the access stream carries: each read is an AccessDecided
(ALLOW) followed by a RecordsDisclosed, 5% of decisions are denials, and a few
break-glasses; 2,000 practitioners read from pools of 30 patients each (no
rule fires for them), and planted abusers each cross one rule (60 distinct
patients, 25 denials). Every event is signed with the session's producer keys
and every one the rules count is verified by the monitor.

1. Backlog: N events are on the topics before the monitor starts; reported is
   the rate from SERVING until the monitor has counted everything (a marker
   alert on each partition, published after the backlog).
2. Live: events are produced at --rate per second for --duration seconds with
   abusers planted along the way; reported is the rate achieved, each alert's
   latency (the alert record's timestamp minus the crossing event's publish
   time) and how long after the last event the markers fired (the backlog the
   monitor had left).

Loopback only; a throw-away topic prefix, deleted at the end.
Usage: python deploy/bench_monitor.py [--events N] [--rate R] [--duration S]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shlex
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
from aiokafka import AIOKafkaProducer

from medledger.runtime.kafka import delete_topics, ensure_topics, make_consumer, make_producer, topic_specs
from medledger.runtime.settings import Topics
from medledger.testing import monitor as m
from medledger.testing.stack import BOOTSTRAP, PRODUCERS, ServiceProcess, free_port
from medledger.v1 import events_pb2

PRACTITIONERS, POOL = 2000, 30


class Workload:
    """Signed access events: (topic, key, value, event id)."""

    def __init__(self, topics: Topics, seed: int = 7) -> None:
        self.topics = topics
        self.rng = random.Random(seed)
        self.staff = [f"bench-practitioner-{i}" for i in range(PRACTITIONERS)]
        self.pools = {p: [f"bench-patient-{i}-{k}" for k in range(POOL)] for i, p in enumerate(self.staff)}
        self.glasses: dict[str, int] = {}

    @staticmethod
    def _record(event: m.Event) -> tuple[str, bytes, bytes, str]:
        topic, env = event
        return topic, env.aggregate_id.encode(), env.SerializeToString(), env.event_id

    def normal(self, n: int) -> list[tuple[str, bytes, bytes, str]]:
        out: list[tuple[str, bytes, bytes, str]] = []
        while len(out) < n:
            who = self.rng.choice(self.staff)
            patient = self.rng.choice(self.pools[who])
            roll = self.rng.random()
            if roll < 0.05:
                out.append(self._record(m.decision(self.topics, who, f"bench-other-{self.rng.randrange(10**9)}")))
            elif roll < 0.052 and self.glasses.get(who, 0) < 2:
                self.glasses[who] = self.glasses.get(who, 0) + 1
                out.append(self._record(m.break_glass(self.topics, who, patient, "bench-org")))
            else:
                out.append(self._record(m.decision(self.topics, who, patient, allow=True)))
                out.append(self._record(m.disclosure(self.topics, who, patient, "bench-org")))
        return out[:n]

    def abuse(self) -> tuple[str, list[tuple[str, bytes, bytes, str]]]:
        """One abuser crossing one rule: (subject, events). Which event crosses
        it is the monitor's to say: the events travel on several partitions, so
        it reads them in an order of its own, not the order they were made."""
        subject = f"bench-abuser-{uuid.uuid4()}"
        if self.rng.random() < 0.5:
            events = [self._record(m.disclosure(self.topics, subject, f"bench-victim-{uuid.uuid4()}", "bench-org"))
                      for _ in range(60)]
            return subject, events
        return subject, [self._record(e) for e in m.probing_burst(self.topics, subject, 25)]


async def send_all(producer: AIOKafkaProducer, records: list[tuple[str, bytes, bytes, str]]) -> None:
    for start in range(0, len(records), 5000):
        futures = [await producer.send(t, v, key=k) for t, k, v, _ in records[start:start + 5000]]
        await asyncio.gather(*futures)


async def wait_for_markers(topics: Topics, markers: list[str], timeout: float) -> float:
    await m.read_alerts(topics, until=lambda f: all(m.alerts_for(f, s) for s in markers), timeout=timeout)
    return time.monotonic()


def markers_for(topics: Topics) -> tuple[list[str], list[tuple[str, bytes, bytes, str]]]:
    subjects = [m.subject_on(p, prefix="bench-marker") for p in range(3)]
    return subjects, [Workload._record(e) for s in subjects for e in m.marker(topics, s)]


async def backlog(topics: Topics, monitor: ServiceProcess, n: int) -> dict[str, float]:
    work = Workload(topics)
    print(f"signing {n} events ...", flush=True)
    abusers = [work.abuse() for _ in range(10)]
    records = work.normal(n - sum(len(e) for _, e in abusers))
    for k, (_, events) in enumerate(abusers):  # spread the abusers through the backlog
        at = (k + 1) * len(records) // (len(abusers) + 1)
        records[at:at] = events
    markers, marker_events = markers_for(topics)
    producer = make_producer(BOOTSTRAP, linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    try:
        await send_all(producer, records + marker_events)
    finally:
        await producer.stop()
    print(f"backlog of {len(records)} events on the topics; starting the monitor", flush=True)
    started = time.monotonic()
    monitor.start().wait_serving(120)
    serving, cpu = time.monotonic(), cpu_s(monitor)
    done = await wait_for_markers(topics, markers, timeout=900)
    cpu = cpu_s(monitor) - cpu
    found = await m.read_alerts(topics, 0, timeout=0)
    raised = {e.aggregate_id for _, e in found}
    missed = [s for s, _ in abusers if s not in raised]
    false = [s for s in raised if s.startswith("bench-practitioner-")]
    counted = len(records) + len(marker_events)
    return {
        "events": counted, "start_s": serving - started, "seconds": done - serving,
        "rate": counted / (done - serving), "missed": len(missed), "false": len(false),
        "alerts": len({e.event_id for _, e in found}), "rss_mb": rss_mb(monitor), "cpu_per_s": cpu / (done - serving),
    }


async def live(topics: Topics, rate: int, duration: float) -> dict[str, float]:
    work = Workload(topics, seed=11)
    ticks = int(duration * 10)
    per_tick = rate // 10
    print(f"signing {ticks * per_tick} events for the live run ...", flush=True)
    plan = [work.normal(per_tick) for _ in range(ticks)]
    planted: dict[str, set[str]] = {}  # abuser -> the ids of its events
    sent_at: dict[str, float] = {}
    for k in range(8):
        subject, events = work.abuse()
        tick = (k + 1) * ticks // 10
        plan[tick] = plan[tick][: max(0, per_tick - len(events))] + events  # a burst larger than a tick replaces all its events
        planted[subject] = {e[3] for e in events}
    producer = make_producer(BOOTSTRAP, linger_ms=5)
    await producer.start()
    begin = time.monotonic()
    try:
        for i, batch in enumerate(plan):
            await asyncio.sleep(max(0.0, begin + i / 10 - time.monotonic()))
            futures = [await producer.send(t, v, key=k) for t, k, v, _ in batch]
            now_wall = time.time()
            for _, _, _, event_id in batch:
                sent_at[event_id] = now_wall
            await asyncio.gather(*futures)
        sent = time.monotonic()
        markers, marker_events = markers_for(topics)
        await send_all(producer, marker_events)
    finally:
        await producer.stop()
    done = await wait_for_markers(topics, markers, timeout=600)
    consumer = make_consumer(BOOTSTRAP, topics.access_alerts, group_id=None)
    await consumer.start()
    latencies: list[float] = []
    try:
        ends = await consumer.end_offsets(list(consumer.assignment()))
        while any([await consumer.position(tp) < end for tp, end in ends.items()]):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    env = events_pb2.EventEnvelope.FromString(r.value)
                    if env.aggregate_id in planted:
                        # the alert names last the event whose arrival crossed the rule: latency is from its publish
                        crossing_id = m.alert_of(env).triggering_event_ids[-1]
                        assert crossing_id in planted[env.aggregate_id], "the alert names an event of someone else"
                        latencies.append(r.timestamp / 1000 - sent_at[crossing_id])
    finally:
        await consumer.stop()
    total = sum(len(b) for b in plan)
    return {
        "events": total, "rate": total / (sent - begin), "drain_s": done - sent, "alerts": len(latencies),
        "planted": len(planted), "latency_max_s": max(latencies, default=float("nan")),
        "latency_p50_s": sorted(latencies)[len(latencies) // 2] if latencies else float("nan"),
    }


def cpu_s(proc: ServiceProcess) -> float:
    """CPU seconds the monitor process used so far."""
    assert proc.proc is not None
    times = psutil.Process(proc.proc.pid).cpu_times()
    return float(times.user + times.system)


def rss_mb(proc: ServiceProcess) -> float:
    assert proc.proc is not None
    return psutil.Process(proc.proc.pid).memory_info().rss / 2**20


async def main(args: argparse.Namespace) -> None:
    command = "python deploy/bench_monitor.py " + shlex.join(sys.argv[1:])
    keys = Path(tempfile.mkdtemp(prefix="medledger-bench-monitor-"))
    env = dict(os.environ, MEDLEDGER_KAFKA_BOOTSTRAP=BOOTSTRAP, MEDLEDGER_LOG_LEVEL="WARNING", **PRODUCERS.write(keys))
    results = []
    for phase in ("backlog", "live"):
        topics = Topics(f"bench_mon_{uuid.uuid4().hex[:8]}.")
        await ensure_topics(BOOTSTRAP, topic_specs(topics))
        port = free_port()
        monitor = ServiceProcess(
            "monitor", dict(env, MEDLEDGER_TOPIC_PREFIX=topics.prefix, MEDLEDGER_MONITOR_PORT=str(port)),
            port, keys / f"monitor-{phase}.log",
        )
        try:
            if phase == "backlog":
                figures = await backlog(topics, monitor, args.events)
            else:
                monitor.start().wait_serving(120)
                before = cpu_s(monitor)
                figures = await live(topics, args.rate, args.duration)
                figures["cpu_per_s"] = (cpu_s(monitor) - before) / (args.duration + figures["drain_s"])
            results.append((phase, figures))
        finally:
            monitor.stop()
            await delete_topics(BOOTSTRAP, topics.all)
    print(f"\n$ {command}")
    for phase, figures in results:
        print(f"{phase}: " + "  ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="backlog events")
    parser.add_argument("--rate", type=int, default=5000, help="live events per second")
    parser.add_argument("--duration", type=float, default=30.0, help="live seconds")
    asyncio.run(main(parser.parse_args()))
