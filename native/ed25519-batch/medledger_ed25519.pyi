"""ZIP 215 Ed25519 verification (ed25519-consensus), one signature or a batch."""

from typing import Sequence

def verify(key: bytes, message: bytes, signature: bytes) -> bool:
    """True iff signature is a valid ZIP 215 signature of message by the raw 32-byte key."""

def verify_batch(keys: Sequence[bytes], messages: Sequence[bytes], signatures: Sequence[bytes]) -> bool:
    """True iff every signature verifies (exactly when each would alone); an empty batch is True."""
