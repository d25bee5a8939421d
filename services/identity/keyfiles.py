"""Key material on disk: Ed25519 private keys (PEM, PKCS#8), public keys
(base64 of the raw 32 bytes) and data keys (base64 of 32 random bytes; those
and the secret-file rules live in runtime/secret_files.py, shared with
consent). Shared by the service's settings and the operator CLI, so what
``medledger identity keygen`` writes is exactly what the services read.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from medledger.runtime.errors import SettingsError
from medledger.runtime.secret_files import DATA_KEY_BYTES, new_data_key, parse_data_key, read_file, write_secret

__all__ = [
    "DATA_KEY_BYTES", "new_data_key", "parse_data_key", "private_key_pem", "parse_public_key", "public_key_text",
    "raw_public_key", "read_file", "write_secret",
]


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
