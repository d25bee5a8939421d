"""Encryption at rest for record payloads. Pure: no I/O.

AES-256-GCM itself is the runtime's (``runtime/sealing.py``: ``encrypt``,
``decrypt``, ``new_key``); what is records' own is the key hierarchy and the
associated data. Each patient has one random AES-256 data key. Every version's payload
(salt || canonical JSON) is sealed with AES-256-GCM under it, with the
patient, record id and version bound as associated data: a ciphertext moved
to another row does not open. The data key is stored only wrapped by a
key-encryption key behind ``KeyWrapper``, so a KMS can take the local file's
place without touching the rest. Erasure destroys the wrapped data key
(crypto-shredding): every payload and salt of the patient is then
unrecoverable, while the commitments on the ledger still verify.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from medledger.records.resource import SALT_BYTES
from medledger.runtime.sealing import SealError, decrypt, encrypt, new_key

__all__ = ["KeyWrapper", "LocalKeyWrapper", "Payload", "SealError", "new_data_key", "open_payload", "seal_payload"]

DATA_KEY_BYTES = 32


class KeyWrapper(Protocol):
    """Wraps data keys under a key-encryption key (a local file, or a KMS)."""

    @property
    def key_id(self) -> str:
        """Names the key-encryption key; stored beside every key it wrapped."""

    def wrap(self, data_key: bytes, context: bytes) -> bytes:
        """The data key encrypted under the KEK, bound to context."""

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        """SealError unless wrapped was made by wrap(…, context) under this KEK."""


class LocalKeyWrapper:
    """A KEK of 32 bytes from a file (MEDLEDGER_RECORDS_KEK_FILE), AES-256-GCM."""

    def __init__(self, kek: bytes) -> None:
        if len(kek) != DATA_KEY_BYTES:
            raise ValueError("a key-encryption key is 32 bytes")
        self._kek = kek
        self._key_id = "local:" + hashlib.sha256(b"medledger records kek id\n" + kek).hexdigest()[:16]

    @property
    def key_id(self) -> str:
        return self._key_id

    def wrap(self, data_key: bytes, context: bytes) -> bytes:
        return encrypt(self._kek, data_key, context)

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        return decrypt(self._kek, wrapped, context)


def data_key_context(patient_id: str) -> bytes:
    return b"medledger.records.data-key\n" + patient_id.encode()


def payload_context(patient_id: str, record_id: str, version: int) -> bytes:
    return f"medledger.records.payload\n{patient_id}\n{record_id}\n{version}".encode()


def new_data_key() -> bytes:
    """A patient's data key: AES-256, from the runtime's sealing like every key."""
    return new_key()


@dataclass(frozen=True)
class Payload:
    """What a version's ciphertext holds."""

    salt: bytes
    canonical: bytes


def seal_payload(data_key: bytes, patient_id: str, record_id: str, version: int, payload: Payload) -> bytes:
    return encrypt(data_key, payload.salt + payload.canonical, payload_context(patient_id, record_id, version))


def open_payload(data_key: bytes, patient_id: str, record_id: str, version: int, sealed: bytes) -> Payload:
    plain = decrypt(data_key, sealed, payload_context(patient_id, record_id, version))
    return Payload(plain[:SALT_BYTES], plain[SALT_BYTES:])
