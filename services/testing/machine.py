"""The "# machine:" line every benchmark prints first, defined once so runs on
different machines (or the same machine set differently) can be told apart.

Besides cores and load, it names the CPU idle driver and, on a KVM guest
with ``haltpoll``, the guest's halt-polling window: with it at 0 every wake
of an idle vCPU goes through the host, and an isolated round trip between
two processes here costs twice what it does with 200 µs of polling
(docs/benchmarks.md, session of 2026-12-02 18:46 UTC).
"""

from __future__ import annotations

import os
from pathlib import Path

SYS = Path("/sys")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def idle_settings(sys_root: Path = SYS) -> str:
    """The idle driver and guest halt polling, as far as this machine shows
    them ("" where it shows neither)."""
    driver = _read(sys_root / "devices/system/cpu/cpuidle/current_driver")
    poll_ns = _read(sys_root / "module/haltpoll/parameters/guest_halt_poll_ns")
    parts = [f"idle driver {driver}"] if driver else []
    if poll_ns is not None:
        parts.append(f"guest halt polling {poll_ns} ns")
    return ", ".join(parts)


def machine_line(*facts: str, load_when: str = "", sys_root: Path = SYS) -> str:
    """"# machine: N cores; <facts>; load average … [load_when]; <idle settings>"."""
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    parts = [f"{os.cpu_count()} cores", *facts, f"load average {load}" + (f" {load_when}" if load_when else "")]
    if idle := idle_settings(sys_root):
        parts.append(idle)
    return "# machine: " + "; ".join(parts)
