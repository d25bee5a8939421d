"""Key material on disk: Ed25519 private keys (PEM, PKCS#8), public keys
(base64 of the raw 32 bytes) and the identity service's data key (base64 of 32
random bytes). Shared by the service's settings and the operator CLI, so what
``medledger identity keygen`` writes is exactly what the service reads.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from medledger.runtime.errors import SettingsError

DATA_KEY_BYTES = 32


def raw_public_key(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def parse_public_key(text: str, where: str) -> bytes:
    """A raw Ed25519 public key from base64 text (what keygen writes to .pub)."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SettingsError(f"{where} is not base64") from None
    if len(raw) != 32:
        raise SettingsError(f"{where} must be the base64 of a raw 32-byte Ed25519 public key")
    return raw


def public_key_text(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


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
