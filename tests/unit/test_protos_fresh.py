"""The generated modules in services/v1 must match protos/ exactly: a proto
edited without `make protos` fails here rather than in production."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.support import ROOT


def _generator() -> object:
    spec = importlib.util.spec_from_file_location("generate", ROOT / "protos" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    fresh = {p.name: p.read_bytes() for p in _generator().generate(tmp_path)}  # type: ignore[attr-defined]
    committed = {p.name: p.read_bytes() for p in (ROOT / "services" / "v1").iterdir() if p.is_file()}
    stale = sorted(name for name in fresh if committed.get(name) != fresh[name])
    extra = sorted(set(committed) - set(fresh))
    assert not stale, f"generated code is stale, run `make protos`: {stale}"
    assert not extra, f"services/v1 holds files no proto generates: {extra}"


def test_every_envelope_field_is_documented() -> None:
    text = (ROOT / "protos" / "medledger" / "v1" / "events.proto").read_text()
    body = text.split("message EventEnvelope {", 1)[1].split("}", 1)[0]
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "=" in line and line.endswith(";"):
            assert lines[i - 1].startswith("//"), f"field without a comment: {line}"
