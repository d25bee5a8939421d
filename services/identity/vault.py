"""Protection of the PHI the identity service keeps: demographics encrypted at
rest and medical record numbers reduced to keyed hashes. No I/O.

Demographics: each identity's serialized Demographics is encrypted with
AES-256-GCM under its own random data key; that key is wrapped (AES-256-GCM)
under the key-encryption key. Both are bound to the identity id as associated
data, so a ciphertext copied onto another identity's row fails to open.
Deleting the row's wrapped key crypto-shreds the demographics.

MRNs: HMAC-SHA256 over (organization id, MRN), so the database can find a
hospital's patient by its own number without holding the number, and the same
MRN at two hospitals gives unrelated hashes.

The key-encryption key and the HMAC key are derived (HKDF-SHA256) from the one
data key file with distinct labels; ``kek_id`` is a derived check value the
database records to catch a data key swapped under existing ciphertext.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

NONCE_BYTES = 12


class VaultError(Exception):
    """A ciphertext does not open with this data key: wrong key or damaged row."""


@dataclass(frozen=True)
class Sealed:
    kek_id: str
    wrapped_key: bytes
    ciphertext: bytes


def _derive(secret: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(secret)


def _encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _decrypt(key: bytes, blob: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag:
        raise VaultError("ciphertext does not open with this data key") from None


class Vault:
    def __init__(self, data_key: bytes) -> None:
        self._kek = _derive(data_key, b"medledger identity demographics kek v1")
        self._mrn_key = _derive(data_key, b"medledger identity mrn hmac v1")
        self.kek_id = _derive(data_key, b"medledger identity data key check v1")[:8].hex()

    def seal(self, identity_id: str, plaintext: bytes) -> Sealed:
        data_key = AESGCM.generate_key(bit_length=256)
        wrapped = _encrypt(self._kek, data_key, b"data-key:" + identity_id.encode())
        return Sealed(self.kek_id, wrapped, _encrypt(data_key, plaintext, b"demographics:" + identity_id.encode()))

    def open(self, identity_id: str, sealed: Sealed) -> bytes:
        if sealed.kek_id != self.kek_id:
            raise VaultError(f"sealed under data key {sealed.kek_id}, this service holds {self.kek_id}")
        data_key = _decrypt(self._kek, sealed.wrapped_key, b"data-key:" + identity_id.encode())
        return _decrypt(data_key, sealed.ciphertext, b"demographics:" + identity_id.encode())

    def mrn_hash(self, organization_id: str, mrn: str) -> bytes:
        message = organization_id.encode() + b"\x00" + mrn.strip().encode()
        return hmac.new(self._mrn_key, message, hashlib.sha256).digest()
