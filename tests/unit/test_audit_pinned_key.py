"""`medledger audit verify` trusts only a verifier key the auditor pinned
(issue #9, item 4): without one it refuses before contacting anything, and its
help says where an auditor gets the key instead of from the ledger itself."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from typer.testing import CliRunner

from medledger.audit.cli import app as audit_app
from medledger.ledger.cli import app as ledger_app

runner = CliRunner()


def _flat(text: str) -> str:
    """Help text without the box drawing and line wrapping of the terminal."""
    return re.sub(r"[\s│╭╮╰╯─]+", " ", text)


def test_verify_refuses_without_a_pinned_key_and_never_asks_the_ledger() -> None:
    with socket.socket() as ledger:  # a "ledger" that would notice any connection
        ledger.bind(("127.0.0.1", 0))
        ledger.listen()
        ledger.settimeout(0.0)
        address = f"127.0.0.1:{ledger.getsockname()[1]}"
        result = runner.invoke(audit_app, ["verify", "--ledger", address, "--hashes-only"], env={
            "MEDLEDGER_AUDIT_VERIFIER_KEY": "", "MEDLEDGER_AUDIT_VERIFIER_KEY_FILE": "",
        })
        assert result.exit_code == 2, result.output
        assert "--verifier-key" in result.output and "out of band" in result.output
        try:
            ledger.accept()
            raise AssertionError("audit verify contacted the ledger before it had a pinned key")
        except BlockingIOError:
            pass


def test_verify_help_says_how_to_obtain_the_key_out_of_band() -> None:
    text = _flat(runner.invoke(audit_app, ["verify", "--help"], env={"COLUMNS": "200"}).output)
    assert "out of band" in text
    assert "medledger ledger verifier-key" in text
    assert "never from the ledger under audit" in text


def test_operator_prints_the_verifier_key_from_the_signing_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "ledger-checkpoint.key"
    generated = runner.invoke(ledger_app, ["keygen", "--out", str(key_file), "--name", "example.org/log"])
    assert generated.exit_code == 0, generated.output
    printed = runner.invoke(ledger_app, ["verifier-key", "--signing-key-file", str(key_file)])
    assert printed.exit_code == 0, printed.output
    assert printed.output == generated.output and printed.output.startswith("example.org/log+")
    missing = runner.invoke(ledger_app, ["verifier-key", "--signing-key-file", str(tmp_path / "absent")])
    assert missing.exit_code == 2
