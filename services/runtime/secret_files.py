"""Secret key files every service reads the same way: data keys (base64 of 32
random bytes, what ``medledger identity keygen --data-key`` writes) and the
rule for where a key file lives.

Decision (identity's token and data keys, consent's data key): when the
variable naming a key file is set, the file must exist — production mounts it
from a Secret, and a missing mount must stop the service, never be papered
over. When it is NOT set (local development, tests), the key lives under
``$MEDLEDGER_RUN_DIR/keys/`` and is generated on first start, with a warning.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
from pathlib import Path
from typing import Callable, Mapping

from medledger.runtime.errors import SettingsError
from medledger.runtime.settings import env_str

log = logging.getLogger(__name__)

DATA_KEY_BYTES = 32


def write_secret(path: Path, data: bytes) -> None:
    """Create path with mode 0600; refuse to overwrite (a replaced key would
    orphan every token or ciphertext made with the old one)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def read_file(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SettingsError(
            f"{setting}={path} cannot be read ({exc.strerror}); create it with `medledger identity keygen`"
        ) from None


def new_data_key() -> bytes:
    """Text for a data key file: base64 of 32 random bytes and a newline."""
    return base64.b64encode(secrets.token_bytes(DATA_KEY_BYTES)) + b"\n"


def parse_data_key(text: bytes, where: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SettingsError(f"{where} is not base64") from None
    if len(raw) != DATA_KEY_BYTES:
        raise SettingsError(f"{where} must hold {DATA_KEY_BYTES} random bytes, base64-encoded")
    return raw


def existing_key_file(setting: str, default_name: str, make: Callable[[], bytes], env: Mapping[str, str] | None) -> Path:
    """The key file's path: the setting's, which must exist, or when unset
    ``$MEDLEDGER_RUN_DIR/keys/<default_name>``, generated with ``make`` if missing."""
    configured = env_str(setting, "", env)
    path = Path(configured) if configured else Path(env_str("MEDLEDGER_RUN_DIR", ".run", env)) / "keys" / default_name
    if not configured and not path.exists():
        log.warning("generating a development key; set %s in production", setting, extra={"path": str(path)})
        try:
            write_secret(path, make())
        except FileExistsError:
            pass  # another replica generated it first
    if not path.exists():
        raise SettingsError(f"{setting}={path} does not exist; create it with `medledger identity keygen`")
    return path


def load_data_key(setting: str, default_name: str, env: Mapping[str, str] | None = None) -> bytes:
    """A service's data key (see the module's decision on where it lives)."""
    path = existing_key_file(setting, default_name, new_data_key, env)
    return parse_data_key(read_file(path, setting), str(path))
