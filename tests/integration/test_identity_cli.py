"""An operator bootstraps a deployment from a shell, exactly as the CLI docs say:
keygen, start the service with the bootstrap key, register a SERVICE, get its token."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Callable

import pytest

from medledger.runtime.auth import TokenVerifier
from medledger.runtime.identity_client import PINNED_KEYS_SETTING, make_verifier, token_verifier
from medledger.testing.stack import MEDLEDGER, ServiceProcess

pytestmark = pytest.mark.timeout(180)


def medledger(*args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([MEDLEDGER, "identity", *args], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def field(output: str, name: str) -> str:
    return next(line.split()[1] for line in output.splitlines() if line.startswith(name))


async def test_operator_bootstraps_and_registers_a_service_from_the_shell(
    spawn: Callable[..., ServiceProcess], tmp_path: Path, service_env: dict[str, str]
) -> None:
    operator = medledger("keygen", "--out", str(tmp_path / "operator.key"))
    operator_id = field(operator, "bootstrap_id")
    assert (tmp_path / "operator.key").stat().st_mode & 0o777 == 0o600
    medledger("keygen", "--out", str(tmp_path / "identity-data.key"), "--data-key")
    identity = spawn(
        "identity",
        MEDLEDGER_IDENTITY_BOOTSTRAP_PUBLIC_KEY_FILE=str(tmp_path / "operator.key.pub"),
        MEDLEDGER_IDENTITY_DATA_KEY_FILE=str(tmp_path / "identity-data.key"),
    ).wait_serving()
    env = dict(service_env, MEDLEDGER_IDENTITY_ADDRESS=identity.address)
    medledger("keygen", "--out", str(tmp_path / "consent.key"))
    service_id = medledger(
        "register", "--as-id", operator_id, "--as-key", str(tmp_path / "operator.key"),
        "--kind", "SERVICE", "--public-key-file", str(tmp_path / "consent.key.pub"), env=env,
    ).strip()
    no_audience = subprocess.run(
        [MEDLEDGER, "identity", "token", "--id", service_id, "--key", str(tmp_path / "consent.key")],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert no_audience.returncode != 0 and "--audience" in no_audience.stderr  # never a token for everything by default
    token = medledger(
        "token", "--id", service_id, "--key", str(tmp_path / "consent.key"), "--audience", "ledger", env=env
    ).strip()
    caller = await make_verifier(identity.address).verify(token, "ledger")
    assert (caller.subject, caller.kind, caller.audience) == (service_id, "SERVICE", ("ledger",))
    # the operator pins the token keys for services that reach identity off loopback without TLS
    key_file = service_env.get("MEDLEDGER_IDENTITY_TOKEN_KEY_FILE") or str(tmp_path / "keys" / "identity-token.key")
    pinned = tmp_path / "token-keys.pub"
    pinned.write_text(medledger("token-keys", "--key-file", key_file))
    offline = token_verifier("identity.example:50051", TokenVerifier, {PINNED_KEYS_SETTING: str(pinned)})
    assert (await offline.verify(token, "ledger")).subject == service_id
    refused = subprocess.run(
        [MEDLEDGER, "identity", "keygen", "--out", str(tmp_path / "consent.key")], capture_output=True, text=True
    )
    assert refused.returncode == 1 and "refusing to overwrite" in refused.stderr
