"""Signed statements a person makes with their identity key: canonical
protobuf encodings under a domain-separation prefix, checked against the key
the identity service resolved. Pure: no I/O.

A statement is accepted only in its canonical encoding (protobuf
``deterministic=True``, no unknown fields), so the message carried by an
event re-serializes to exactly the bytes that were signed and anyone can
verify it from the log. The prefix (``medledger.v1.RecordAttestation\\n``,
``medledger.v1.ErasureRequest\\n`` ...) separates each kind of statement from
every other signature the same key makes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.message import DecodeError, Message

from medledger.runtime.errors import InvalidArgument, PermissionDenied

SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32
MAX_STATEMENT_BYTES = 64 * 1024

M = TypeVar("M", bound=Message)


def canonical(message: Message) -> bytes:
    """The one encoding of a statement that signatures cover."""
    return message.SerializeToString(deterministic=True)


def sign(key: Ed25519PrivateKey, prefix: bytes, message: Message) -> tuple[bytes, bytes]:
    """(canonical bytes, signature over prefix || bytes): what a client sends."""
    encoded = canonical(message)
    return encoded, key.sign(prefix + encoded)


def parse_canonical(cls: type[M], encoded: bytes, what: str) -> M:
    """The statement from its canonical encoding; InvalidArgument for anything
    else (empty, oversized, not protobuf, unknown fields, another encoding)."""
    name = cls.DESCRIPTOR.full_name
    if not encoded:
        raise InvalidArgument(f"{what} is required: the canonical {name} that was signed")
    if len(encoded) > MAX_STATEMENT_BYTES:
        raise InvalidArgument(f"{what} exceeds {MAX_STATEMENT_BYTES} bytes")
    message = cls()
    try:
        message.ParseFromString(encoded)
    except DecodeError:
        raise InvalidArgument(f"{what} is not a serialized {name}") from None
    message.DiscardUnknownFields()
    if canonical(message) != encoded:
        raise InvalidArgument(f"{what} is not in canonical encoding (deterministic serialization, no unknown fields)")
    return message


def require_signature_shape(signature: bytes, what: str) -> None:
    if len(signature) != SIGNATURE_BYTES:
        raise InvalidArgument(f"{what} must be a {SIGNATURE_BYTES}-byte Ed25519 signature")


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A signer's key as the identity service resolved it for a point in time."""

    key_id: str
    public_key: bytes
    valid_from: datetime
    valid_until: datetime | None
    revoked_at: datetime | None


def signature_valid(public_key: bytes, message: bytes, signature: bytes) -> bool:
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_statement(key: SigningKey, signed_at: datetime, message: bytes, signature: bytes, what: str) -> None:
    """PermissionDenied unless the key was in effect at signed_at, was never
    revoked (whoever stole a revoked key could backdate signed_at) and the
    signature verifies over ``message`` (prefix included)."""
    if key.revoked_at is not None:
        raise PermissionDenied(f"{what}: signing key {key.key_id} has been revoked")
    if signed_at < key.valid_from or (key.valid_until is not None and signed_at >= key.valid_until):
        raise PermissionDenied(f"{what}: signing key {key.key_id} was not in effect at signed_at")
    if not signature_valid(key.public_key, message, signature):
        raise PermissionDenied(f"{what}: the signature does not verify against the signer's key {key.key_id}")
