"""Builds the transparency-log tools the interop tests run against a live
MedLedger: Tessera's ``cmd/fsck`` (pinned version) and ``tlogclient``, our small
program on Tessera's ``client`` package (tests/interop/go). Binaries are cached
per version in MEDLEDGER_INTEROP_CACHE (default ~/.cache/medledger-interop), so
only the first run compiles. Where Go is missing the tests are skipped, saying so."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

TESSERA_VERSION = "v1.0.4"
FSCK_MODULE = f"github.com/transparency-dev/tessera/cmd/fsck@{TESSERA_VERSION}"
CLIENT_SOURCE = Path(__file__).parent / "go"
BUILD_TIMEOUT_S = 900


@dataclass(frozen=True)
class TesseraTools:
    fsck: Path
    tlogclient: Path


def _cache_dir() -> Path:
    default = Path.home() / ".cache" / "medledger-interop"
    return Path(os.environ.get("MEDLEDGER_INTEROP_CACHE", default)) / TESSERA_VERSION


def _go_env(bin_dir: Path) -> dict[str, str]:
    return dict(os.environ, GOBIN=str(bin_dir), GOFLAGS="-mod=mod", CGO_ENABLED="0")


def _run_go(go: str, args: list[str], cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run([go, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    if done.returncode != 0:
        raise AssertionError(f"go {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


def build_tools() -> TesseraTools:
    """fsck and tlogclient, built once; pytest.skip where no Go toolchain exists."""
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        pytest.skip("Go is not installed: the tlog-tiles interop tests need `go` on PATH to build Tessera's fsck")
    bin_dir = _cache_dir()
    bin_dir.mkdir(parents=True, exist_ok=True)
    env = _go_env(bin_dir)
    fsck = bin_dir / "fsck"
    if not fsck.exists():
        _run_go(go, ["install", FSCK_MODULE], bin_dir, env)
    tlogclient = bin_dir / "tlogclient"
    sources = [CLIENT_SOURCE / name for name in ("main.go", "go.mod", "go.sum")]
    if not tlogclient.exists() or tlogclient.stat().st_mtime < max(p.stat().st_mtime for p in sources):
        _run_go(go, ["build", "-o", str(tlogclient), "."], CLIENT_SOURCE, env)
    return TesseraTools(fsck, tlogclient)
