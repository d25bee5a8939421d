"""The canonical encoding of consent terms and their Ed25519 signatures.

Decision: the signed bytes are the ConsentTerms protobuf serialized with
``deterministic=True`` and without unknown fields — fields in field-number
order, proto3 defaults omitted, repeated enums packed — so one set of terms
has exactly one encoding. The service accepts terms only in that form
(``parse_canonical``), which makes re-serializing the terms carried by a
ConsentGranted event reproduce the signed bytes: anyone with the signer's
public key can verify a consent from the event alone.

The signature covers ``CONTEXT || terms``. The context string separates
consent signatures from anything else the same key signs (identity
challenges, future documents), so no other signed message can be replayed
as a consent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.message import DecodeError

from medledger.runtime.errors import InvalidArgument, PermissionDenied
from medledger.v1 import consent_pb2

CONTEXT = b"medledger.v1.ConsentTerms\n"
SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32
MAX_TERMS_BYTES = 64 * 1024


def canonical_terms(terms: consent_pb2.ConsentTerms) -> bytes:
    """The one encoding of terms that signatures cover."""
    return terms.SerializeToString(deterministic=True)


def signing_message(encoded_terms: bytes) -> bytes:
    """The exact bytes an Ed25519 consent signature is made over."""
    return CONTEXT + encoded_terms


def sign_terms(key: Ed25519PrivateKey, terms: consent_pb2.ConsentTerms) -> tuple[bytes, bytes]:
    """(canonical terms, signature): what a patient's client sends to GrantConsent."""
    encoded = canonical_terms(terms)
    return encoded, key.sign(signing_message(encoded))


def parse_canonical(encoded: bytes) -> consent_pb2.ConsentTerms:
    """Terms from their canonical encoding; InvalidArgument for anything else
    (not protobuf, unknown fields, or another encoding of the same terms)."""
    if not encoded:
        raise InvalidArgument("terms are required: the canonical ConsentTerms the signer signed")
    if len(encoded) > MAX_TERMS_BYTES:
        raise InvalidArgument(f"terms exceed {MAX_TERMS_BYTES} bytes")
    terms = consent_pb2.ConsentTerms()
    try:
        terms.ParseFromString(encoded)
    except DecodeError:
        raise InvalidArgument("terms are not a serialized medledger.v1.ConsentTerms") from None
    terms.DiscardUnknownFields()
    if canonical_terms(terms) != encoded:
        raise InvalidArgument(
            "terms are not in canonical encoding (protobuf deterministic serialization, no unknown fields)"
        )
    return terms


def signature_valid(public_key: bytes, encoded_terms: bytes, signature: bytes) -> bool:
    """Whether signature is the Ed25519 signature of public_key over the terms."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, signing_message(encoded_terms))
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A signer's key as the identity service resolved it for a point in time."""

    key_id: str
    public_key: bytes
    valid_from: datetime
    valid_until: datetime | None
    revoked_at: datetime | None


def verify_consent_signature(key: SigningKey, signed_at: datetime, encoded_terms: bytes, signature: bytes) -> None:
    """PermissionDenied unless the key was in effect at signed_at, has never
    been revoked (a revoked key may have been stolen: whoever holds it could
    backdate signed_at) and the signature verifies."""
    if key.revoked_at is not None:
        raise PermissionDenied(f"signing key {key.key_id} has been revoked")
    if signed_at < key.valid_from or (key.valid_until is not None and signed_at >= key.valid_until):
        raise PermissionDenied(f"signing key {key.key_id} was not in effect at signed_at {signed_at.isoformat()}")
    if not signature_valid(key.public_key, encoded_terms, signature):
        raise PermissionDenied("the signature does not verify against the signer's key: the terms were not signed by it")
