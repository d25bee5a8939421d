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
as a consent. A patient's appointment of a representative is signed the same
way under ``APPOINTMENT_CONTEXT``. The mechanics are the runtime's
(runtime/signed.py); this module names consent's statements.

Which key may sign (issue 9): the key the identity service knows as the
signer's *current* key when the statement is submitted, in effect at
``signed_at`` and never revoked. Resolving the key as of a ``signed_at`` the
signer chooses would let a key rotated out (never revoked) sign backdated
statements; ``SigningWindow`` (validation.py) bounds ``signed_at`` too.
"""

from __future__ import annotations

from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medledger.runtime import signed
from medledger.runtime.errors import PermissionDenied
from medledger.runtime.signed import SIGNATURE_BYTES, SigningKey
from medledger.v1 import consent_pb2

__all__ = [
    "APPOINTMENT_CONTEXT", "CONTEXT", "SIGNATURE_BYTES", "SigningKey", "canonical_terms", "parse_appointment",
    "parse_canonical", "require_current_key", "sign_appointment", "sign_terms", "signature_valid", "signing_message",
    "verify_consent_signature", "verify_signed",
]

CONTEXT = b"medledger.v1.ConsentTerms\n"
APPOINTMENT_CONTEXT = b"medledger.v1.RepresentativeAppointment\n"


def canonical_terms(terms: consent_pb2.ConsentTerms) -> bytes:
    """The one encoding of terms that signatures cover."""
    return signed.canonical(terms)


def signing_message(encoded_terms: bytes) -> bytes:
    """The exact bytes an Ed25519 consent signature is made over."""
    return CONTEXT + encoded_terms


def sign_terms(key: Ed25519PrivateKey, terms: consent_pb2.ConsentTerms) -> tuple[bytes, bytes]:
    """(canonical terms, signature): what a patient's client sends to GrantConsent."""
    return signed.sign(key, CONTEXT, terms)


def sign_appointment(key: Ed25519PrivateKey, appointment: consent_pb2.RepresentativeAppointment) -> tuple[bytes, bytes]:
    """(canonical appointment, signature): what a patient's client sends to RegisterRepresentative."""
    return signed.sign(key, APPOINTMENT_CONTEXT, appointment)


def parse_canonical(encoded: bytes) -> consent_pb2.ConsentTerms:
    """Terms from their canonical encoding; InvalidArgument for anything else
    (not protobuf, unknown fields, or another encoding of the same terms)."""
    return signed.parse_canonical(consent_pb2.ConsentTerms, encoded, "terms")


def parse_appointment(encoded: bytes) -> consent_pb2.RepresentativeAppointment:
    """A RepresentativeAppointment from its canonical encoding (as parse_canonical)."""
    return signed.parse_canonical(consent_pb2.RepresentativeAppointment, encoded, "appointment")


def signature_valid(public_key: bytes, encoded_terms: bytes, signature: bytes) -> bool:
    """Whether signature is the Ed25519 signature of public_key over the terms."""
    return signed.signature_valid(public_key, signing_message(encoded_terms), signature)


def verify_consent_signature(key: SigningKey, signed_at: datetime, encoded_terms: bytes, signature: bytes) -> None:
    """PermissionDenied unless the key was in effect at signed_at, has never
    been revoked (a revoked key may have been stolen: whoever holds it could
    backdate signed_at) and the signature verifies. What an auditor re-checks
    from the log; at submission ``verify_signed`` also requires the current key."""
    signed.verify_statement(key, signed_at, signing_message(encoded_terms), signature, "consent")


def require_current_key(key: SigningKey, now: datetime) -> None:
    """PermissionDenied unless key is the signer's current key at ``now``."""
    if key.revoked_at is not None:
        raise PermissionDenied(f"signing key {key.key_id} has been revoked")
    if key.valid_until is not None and key.valid_until <= now:
        raise PermissionDenied(
            f"signing key {key.key_id} is no longer the signer's current key: sign again with the current key"
        )


def verify_signed(key: SigningKey, now: datetime, signed_at: datetime, message: bytes, signature: bytes, what: str) -> None:
    """A statement submitted now: signed by the signer's current key, in
    effect at signed_at, over ``message`` (context included)."""
    require_current_key(key, now)
    signed.verify_statement(key, signed_at, message, signature, what)
