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
database records to catch a data key swapped under existing ciphertext. The
envelope encryption itself is shared with consent (runtime/sealing.py).
"""

from __future__ import annotations

import hashlib
import hmac

from medledger.runtime.sealing import Labels, Sealed, Sealer, SealError, derive

__all__ = ["Sealed", "Vault", "VaultError"]

VaultError = SealError  # a ciphertext does not open with this data key

DEMOGRAPHICS = Labels(
    kek=b"medledger identity demographics kek v1",
    check=b"medledger identity data key check v1",
    content=b"demographics:",
)


class Vault:
    def __init__(self, data_key: bytes) -> None:
        self._sealer = Sealer(data_key, DEMOGRAPHICS)
        self._mrn_key = derive(data_key, b"medledger identity mrn hmac v1")
        self.kek_id = self._sealer.kek_id

    def seal(self, identity_id: str, plaintext: bytes) -> Sealed:
        return self._sealer.seal(identity_id, plaintext)

    def open(self, identity_id: str, sealed: Sealed) -> bytes:
        return self._sealer.open(identity_id, sealed)

    def mrn_hash(self, organization_id: str, mrn: str) -> bytes:
        message = organization_id.encode() + b"\x00" + mrn.strip().encode()
        return hmac.new(self._mrn_key, message, hashlib.sha256).digest()
