"""Runs from any clone (issue #8): deploy/postgres/pg.sh works from a checkout in
a 0700 directory, as root (whose server runs as the `postgres` OS user, which
cannot enter that directory) and as a normal user. It runs a private cluster on
a free port, so the shared one on MEDLEDGER_PG_PORT is not touched."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from medledger.testing.stack import ROOT, free_port


def _clone(tmp_path: Path) -> Path:
    """The deploy scripts laid out as in a checkout, inside a directory only we can enter."""
    private = tmp_path / "private"
    clone = private / "clone"
    (clone / "deploy" / "postgres").mkdir(parents=True)
    shutil.copy2(ROOT / "deploy" / "lib.sh", clone / "deploy" / "lib.sh")
    shutil.copy2(ROOT / "deploy" / "postgres" / "pg.sh", clone / "deploy" / "postgres" / "pg.sh")
    private.chmod(0o700)
    return clone


def test_pg_sh_runs_from_a_checkout_nobody_else_can_enter(tmp_path: Path) -> None:
    clone = _clone(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDLEDGER_")}
    env["MEDLEDGER_PG_PORT"] = str(free_port())

    def pg(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["bash", str(clone / "deploy" / "postgres" / "pg.sh"), *args],
            cwd=clone, env=env, capture_output=True, text=True, timeout=180,
        )
        if ok:
            assert done.returncode == 0, f"pg.sh {' '.join(args)}: {done.stdout}{done.stderr}"
        return done

    where = Path(pg("where").stdout.strip())
    try:
        pg("start")
        pg("createdb", "medledger_anyclone")
        assert pg("status").stdout.startswith(f"postgres: running on 127.0.0.1:{env['MEDLEDGER_PG_PORT']} ")
        pg("stop")
        assert pg("status", ok=False).returncode == 3
        pg("start")  # the data survives a restart
        assert pg("psql", "-Atc", "SELECT 1 FROM pg_database WHERE datname = 'medledger_anyclone'").stdout.strip() == "1"
    finally:
        pg("reset", ok=False)
    assert pg("status", ok=False).returncode == 3
    if os.geteuid() == 0:
        # root's cluster lives outside the checkout, and reset leaves nothing behind.
        assert clone not in where.parents and not where.exists()
    else:
        assert where == clone / ".run" / "postgres" and not (where / "data").exists()
