"""The benchmarks' machine line names what changes their figures between machines."""

from pathlib import Path

from medledger.testing.machine import idle_settings, machine_line


def _sysfs(root: Path, driver: str | None, poll_ns: str | None) -> Path:
    if driver is not None:
        (root / "devices/system/cpu/cpuidle").mkdir(parents=True)
        (root / "devices/system/cpu/cpuidle/current_driver").write_text(driver + "\n")
    if poll_ns is not None:
        (root / "module/haltpoll/parameters").mkdir(parents=True)
        (root / "module/haltpoll/parameters/guest_halt_poll_ns").write_text(poll_ns + "\n")
    return root


def test_a_kvm_guest_shows_its_idle_driver_and_halt_polling(tmp_path: Path) -> None:
    root = _sysfs(tmp_path, "haltpoll", "200000")
    assert idle_settings(root) == "idle driver haltpoll, guest halt polling 200000 ns"
    line = machine_line("Kafka and PostgreSQL on this machine", sys_root=root)
    assert line.startswith(f"# machine: {__import__('os').cpu_count()} cores; Kafka and PostgreSQL on this machine; load average ")
    assert line.endswith("; idle driver haltpoll, guest halt polling 200000 ns")


def test_a_machine_without_them_says_nothing_about_them(tmp_path: Path) -> None:
    assert idle_settings(tmp_path) == ""
    assert "idle" not in machine_line(sys_root=tmp_path)
    assert idle_settings(_sysfs(tmp_path, "intel_idle", None)) == "idle driver intel_idle"


def test_the_load_average_says_when_it_was_read(tmp_path: Path) -> None:
    line = machine_line("one fact", load_when="before the stack starts", sys_root=tmp_path)
    assert line.endswith(" before the stack starts")
    assert "; one fact; load average " in line
