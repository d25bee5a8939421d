"""CPU time per operation, process by process, for the benchmarks.

On this project's two-core machines every service, Kafka, PostgreSQL and
the load generator share the cores, so a latency target is mostly missed
for want of CPU, not because one call is slow; and latency there is noisy,
while CPU seconds per operation are not. So the
benchmarks report, for a timed phase, how many milliseconds of CPU each part
of the stack (each service, Kafka, PostgreSQL, the load generator) spent per
operation, read from the kernel's per-process accounting (utime + stime).
Each line also gives the hypervisor's steal over the phase: on these
virtual machines other guests took up to a third of the cores' time in
some runs (vmstat's st column), which slows every figure of such a run.

A process that exits inside the phase takes its CPU with it (the kernel
folds it into a parent that is not watched): PostgreSQL backends come from
connection pools that live through a phase, so this is rare, and the line
says how many were lost.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import psutil

from medledger.testing.stack import PG_PORT

Finder = Callable[[], Iterable[psutil.Process]]


@dataclass(frozen=True)
class Sample:
    """One process's CPU seconds so far, in all and per thread."""

    total: float
    threads: dict[int, float]


def _sample(proc: psutil.Process) -> Sample | None:
    try:
        with proc.oneshot():
            t = proc.cpu_times()
            threads = {th.id: th.user_time + th.system_time for th in proc.threads()}
        return Sample(float(t.user + t.system), threads)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def processes(*pids: int) -> Finder:
    """Fixed processes (a service's replicas) and their children."""
    def find() -> list[psutil.Process]:
        found = []
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                found += [proc, *proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        return found
    return find


def kafka() -> list[psutil.Process]:
    """The local broker (deploy/kafka/kafka.sh runs kafka.Kafka in one JVM)."""
    return [p for p in psutil.process_iter(["cmdline"]) if "kafka.Kafka" in (p.info["cmdline"] or [])]


def postgres() -> list[psutil.Process]:
    """The local cluster's postmaster (listening on PG_PORT) and every backend and worker under it."""
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == PG_PORT and conn.pid:
            postmaster = psutil.Process(conn.pid)
            return [postmaster, *postmaster.children(recursive=True)]
    return []


def _is_service(proc: psutil.Process) -> bool:
    """A process started as ``medledger serve <name>`` (testing.stack)."""
    try:
        return "serve" in (proc.cmdline() or [])
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


def load_generator() -> list[psutil.Process]:
    """This process and its descendants (e.g. forked producers), except the
    services and everything under them: a service's own children are counted
    with the service (``processes``), and were counted twice until 2026-12-02."""
    found = [psutil.Process(os.getpid())]
    walked = 0
    while walked < len(found):
        found += [child for child in _children(found[walked]) if not _is_service(child)]
        walked += 1
    return found


@dataclass(frozen=True)
class Usage:
    """CPU seconds per part over one phase, and each part's busiest thread's."""

    seconds: dict[str, float]
    busiest_thread: dict[str, float]
    wall: float
    lost: int  # processes that exited inside the phase (their CPU is not counted)
    # Share of the machine's CPU time the hypervisor gave to other guests in
    # the phase (/proc/stat steal): a run with much of it measured a slower
    # machine, in latency and in CPU per operation alike.
    steal: float

    def _steal(self) -> str:
        return f"; hypervisor steal {self.steal:.0%} of the cores' time"

    def _by_use(self) -> list[tuple[str, float]]:
        return sorted(self.seconds.items(), key=lambda kv: -kv[1])

    def per_op_line(self, operations: int, what: str) -> str:
        """E.g. "CPU per write: records 3.35 ms, kafka 1.21 ms, ...; all 7.30 ms (73% of 2 cores ...)"."""
        total = sum(self.seconds.values())
        parts = ", ".join(f"{name} {s / operations * 1000:.2f} ms" for name, s in self._by_use())
        cores = psutil.cpu_count() or 1
        busy = total / self.wall / cores if self.wall > 0 else 0.0
        lost = f"; {self.lost} process(es) exited inside the phase, not counted" if self.lost else ""
        return (f"CPU per {what}: {parts}; all {total / operations * 1000:.2f} ms "
                f"({busy:.0%} of {cores} cores over {self.wall:.1f} s){self._steal()}{lost}")

    def per_second_line(self) -> str:
        """E.g. "records 2.1%, kafka 3.0%, ... of a core; all 9.5% over 5.0 s"."""
        parts = ", ".join(f"{name} {s / self.wall:.1%}" for name, s in self._by_use())
        return f"{parts} of a core; all {sum(self.seconds.values()) / self.wall:.1%} over {self.wall:.1f} s{self._steal()}"

    def busiest_line(self, *names: str) -> str:
        """How busy each named part's busiest thread was (a Python service's
        event loop: at 100% it is the bottleneck, whatever the cores do)."""
        return "busiest thread: " + ", ".join(
            f"{name} {self.busiest_thread.get(name, 0.0) / self.wall:.0%}" for name in names if self.wall > 0)


class CpuMeter:
    """Counts CPU seconds per named part between ``start()`` and ``stop()``."""

    def __init__(self, parts: Mapping[str, Finder]) -> None:
        self.parts = dict(parts)
        self._before: dict[str, dict[int, Sample]] = {}
        self._started = 0.0
        self._machine_before: tuple[float, float] = (0.0, 0.0)

    @classmethod
    def for_stack(cls, services: Mapping[str, Iterable[int]]) -> CpuMeter:
        """Each service (by its processes' pids), Kafka, PostgreSQL and the load generator."""
        parts: dict[str, Finder] = {name: processes(*pids) for name, pids in services.items()}
        parts.update(kafka=kafka, postgres=postgres, **{"load generator": load_generator})
        return cls(parts)

    def _snapshot(self) -> dict[str, dict[int, Sample]]:
        snap: dict[str, dict[int, Sample]] = {}
        for name, find in self.parts.items():
            snap[name] = {}
            for proc in find():
                sample = _sample(proc)
                if sample is not None:
                    snap[name][proc.pid] = sample
        return snap

    def start(self) -> None:
        self._before = self._snapshot()
        self._machine_before = _machine_times()
        self._started = time.monotonic()

    def stop(self) -> Usage:
        wall = time.monotonic() - self._started
        after = self._snapshot()
        (stolen, total), (stolen_before, total_before) = _machine_times(), self._machine_before
        steal = (stolen - stolen_before) / (total - total_before) if total > total_before else 0.0
        seconds: dict[str, float] = {}
        busiest: dict[str, float] = {}
        lost = 0
        for name, now in after.items():
            before = self._before.get(name, {})
            seconds[name] = sum(s.total - before[pid].total if pid in before else s.total for pid, s in now.items())
            busiest[name] = max((used - before[pid].threads.get(tid, 0.0) if pid in before else used
                                 for pid, s in now.items() for tid, used in s.threads.items()), default=0.0)
            lost += sum(1 for pid in before if pid not in now)
        return Usage(seconds, busiest, wall, lost, steal)


def _machine_times() -> tuple[float, float]:
    """(stolen, all) CPU seconds of the machine so far; guest time is already
    counted in user time, so it is left out of the sum."""
    times = psutil.cpu_times()
    every = sum(v for k, v in times._asdict().items() if k not in ("guest", "guest_nice"))
    return getattr(times, "steal", 0.0), every
