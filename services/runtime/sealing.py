"""Envelope encryption of protected text at rest, for every service that keeps
some (identity's demographics, consent's break-glass justifications and
review notes). No I/O.

Each sealed value gets its own random AES-256-GCM data key; that key is
wrapped (AES-256-GCM) under a key-encryption key derived (HKDF-SHA256) from
the service's data key file. Both ciphertexts are bound to the owning id as
associated data, so a ciphertext copied onto another row fails to open, and
deleting a row's wrapped key crypto-shreds its text. ``kek_id`` is a derived
check value stored with each row, to catch a data key swapped under existing
ciphertext.

The labels are the caller's: one data key file per service, and labels that
differ per use, so no two uses can open each other's ciphertexts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

NONCE_BYTES = 12


class SealError(Exception):
    """A ciphertext does not open with this data key: wrong key or damaged row."""


@dataclass(frozen=True)
class Sealed:
    kek_id: str
    wrapped_key: bytes
    ciphertext: bytes


def derive(secret: bytes, label: bytes) -> bytes:
    """A 32-byte key for one purpose from the service's data key."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(secret)


def new_key() -> bytes:
    """A random AES-256 key (a per-value or per-patient data key)."""
    return AESGCM.generate_key(bit_length=256)


def encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM with a random nonce, returned in front of the ciphertext."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def decrypt(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """What ``encrypt`` sealed; SealError if the key or associated data differ."""
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag:
        raise SealError("ciphertext does not open with this data key") from None


@dataclass(frozen=True)
class Labels:
    """What a use of sealing is called in its derivations and associated data."""

    kek: bytes  # HKDF label of the key-encryption key
    check: bytes  # HKDF label of the kek_id check value
    content: bytes  # associated-data prefix of the sealed text (the id follows)


class Sealer:
    def __init__(self, data_key: bytes, labels: Labels) -> None:
        self._kek = derive(data_key, labels.kek)
        self._content = labels.content
        self.kek_id = derive(data_key, labels.check)[:8].hex()

    def seal(self, owner_id: str, plaintext: bytes) -> Sealed:
        data_key = new_key()
        wrapped = encrypt(self._kek, data_key, b"data-key:" + owner_id.encode())
        return Sealed(self.kek_id, wrapped, encrypt(data_key, plaintext, self._content + owner_id.encode()))

    def open(self, owner_id: str, sealed: Sealed) -> bytes:
        if sealed.kek_id != self.kek_id:
            raise SealError(f"sealed under data key {sealed.kek_id}, this service holds {self.kek_id}")
        data_key = decrypt(self._kek, sealed.wrapped_key, b"data-key:" + owner_id.encode())
        return decrypt(data_key, sealed.ciphertext, self._content + owner_id.encode())
