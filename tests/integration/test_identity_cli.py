"""An operator bootstraps a deployment from a shell, exactly as the CLI docs say:
keygen, start the service with the bootstrap key, register a SERVICE, get its token."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Callable

import pytest

from medledger.runtime.identity_client import make_verifier
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
    token = medledger("token", "--id", service_id, "--key", str(tmp_path / "consent.key"), env=env).strip()
    caller = await make_verifier(identity.address).verify(token)
    assert (caller.subject, caller.kind) == (service_id, "SERVICE")
    refused = subprocess.run(
        [MEDLEDGER, "identity", "keygen", "--out", str(tmp_path / "consent.key")], capture_output=True, text=True
    )
    assert refused.returncode == 1 and "refusing to overwrite" in refused.stderr
