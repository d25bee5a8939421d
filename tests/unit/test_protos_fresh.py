"""The generated modules in services/v1 must match protos/ exactly: a proto
edited without `make protos` fails here rather than in production."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from medledger.testing.stack import ROOT


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


_DECLARATION = re.compile(
    r"^((repeated |optional |map<[^>]+> )?[\w.]+ \w+ = \d+;|rpc \w+|(message|enum|service) \w+)"
)


@pytest.mark.parametrize("proto", sorted(p.name for p in (ROOT / "protos" / "medledger" / "v1").glob("*.proto")))
def test_every_field_message_and_rpc_is_documented(proto: str) -> None:
    """The protos are the public contract: each declaration carries its own comment."""
    lines = [line.strip() for line in (ROOT / "protos" / "medledger" / "v1" / proto).read_text().splitlines()]
    undocumented = [
        line for i, line in enumerate(lines) if _DECLARATION.match(line) and not lines[i - 1].startswith("//")
    ]
    assert not undocumented, f"{proto}: declarations without a comment directly above: {undocumented}"


def test_contract_is_versioned() -> None:
    for proto in (ROOT / "protos" / "medledger" / "v1").glob("*.proto"):
        assert "package medledger.v1;" in proto.read_text(), proto.name
