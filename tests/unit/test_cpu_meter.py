"""The benchmarks' CPU accounting (medledger.testing.cpu): each process is
counted under one part of the stack only."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil

from medledger.testing.cpu import load_generator, processes

# A stand-in for ``medledger serve <name>``: its argv says "serve", and it
# starts a child of its own (as a service that spawned a worker would).
SERVICE = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(30)
"""


def _wait_for_pid(path: Path) -> int:
    for _ in range(200):
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError("the stand-in service did not start its child")


def test_a_services_child_counts_under_the_service_not_also_under_the_load_generator(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    service = subprocess.Popen([sys.executable, "-c", SERVICE, str(pid_file), "serve", "records"])
    try:
        service_child = _wait_for_pid(pid_file)
        generator = {p.pid for p in load_generator()}
        service_part = {p.pid for p in processes(service.pid)()}
        assert helper.pid in generator
        assert service_part == {service.pid, service_child}
        assert not generator & service_part
    finally:
        for proc in (helper, service):
            proc.kill()
            proc.wait()
        try:
            psutil.Process(_wait_for_pid(pid_file)).kill()
        except psutil.NoSuchProcess:
            pass
