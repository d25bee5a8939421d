"""A session: one identity's bearer tokens, obtained from its Ed25519 key and
renewed before they expire.

The identity service issues a token for a signed challenge (docs/architecture.md,
Security model). A session does that on first use and again shortly before the
token runs out, per audience (the service a token is for), so a hospital system
that keeps a session open for hours never sends an expired token. It is safe
to share between threads.

Two checks protect the key: the session signs a challenge only if the message
is exactly the documented challenge for this identity and nonce (a rogue
identity endpoint cannot have it sign consent terms or a record commitment
instead), and it measures a token's lifetime on its own clock from the
token's ``iat``/``exp``, so a skewed local clock does not keep a dead token.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from medledger.client.rpc import DEFAULT_TIMEOUT_S, call, status_code, translate
from medledger.identity.domain import challenge_message, key_id_for
from medledger.runtime import errors
from medledger.runtime.identity_client import load_private_key
from medledger.v1 import identity_pb2, identity_pb2_grpc

T = TypeVar("T")

RENEW_MARGIN_S = 60.0
"""Renew this long before expiry (at most a fifth of the token's lifetime)."""


class Signer(Protocol):
    """An Ed25519 private key, or anything that signs like one (an HSM or
    a smart-card wrapper): ``cryptography``'s Ed25519PrivateKey fits."""

    def sign(self, data: bytes) -> bytes: ...

    def public_key(self) -> Ed25519PublicKey: ...


def load_key(path: str | Path) -> Signer:
    """The PEM private key file ``medledger identity keygen`` writes."""
    return load_private_key(Path(path))


def raw_public_key(key: Signer) -> bytes:
    """The 32 raw bytes of the signer's public key."""
    return key.public_key().public_bytes_raw()


@dataclass(frozen=True)
class Token:
    """A bearer token and the local monotonic time after which it is renewed."""

    value: str
    renew_at: float


def _lifetime_s(token: str, expires_at_unix: float, now_unix: float) -> float:
    """The token's lifetime in seconds, from its own iat/exp when readable."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
        return float(claims["exp"]) - float(claims["iat"])
    except (jwt.PyJWTError, KeyError, TypeError, ValueError):
        return expires_at_unix - now_unix


Audience = tuple[str, ...]
"""The services a token is for (``identity``, ``consent``, ``records``,
``ledger``): each service accepts only tokens naming it."""


class Session:
    """Tokens for one identity, one per audience asked for."""

    def __init__(
        self,
        stub: identity_pb2_grpc.IdentityServiceStub,
        identity_id: str,
        key: Signer,
        *,
        renew_margin_s: float = RENEW_MARGIN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.identity_id = identity_id
        self.key = key
        self.key_id = key_id_for(raw_public_key(key))
        self._stub = stub
        self._margin = renew_margin_s
        self._clock = clock
        self._tokens: dict[Audience, Token] = {}
        self._lock = threading.Lock()

    def sign(self, message: bytes) -> bytes:
        """An Ed25519 signature by this identity's key (callers domain-separate)."""
        return self.key.sign(message)

    def token(self, audience: Audience) -> str:
        """A token for audience, valid for at least the renewal margin."""
        with self._lock:
            held = self._tokens.get(audience)
            if held is None or self._clock() >= held.renew_at:
                held = self._tokens[audience] = self._issue(audience)
            return held.value

    def metadata(self, audience: Audience) -> tuple[tuple[str, str], ...]:
        """gRPC call metadata carrying a token for audience."""
        return (("authorization", f"Bearer {self.token(audience)}"),)

    def forget(self, audience: Audience) -> None:
        """Drop the cached token (the next call logs in again)."""
        with self._lock:
            self._tokens.pop(audience, None)

    def call(self, what: str, audience: Audience, method: Callable[..., T], request: Any, timeout: float = DEFAULT_TIMEOUT_S) -> T:
        """Call ``method(request)`` with a token for audience. A call refused as
        UNAUTHENTICATED (a token the service no longer accepts, e.g. after its
        key rotated) is retried once with a new token: authentication happens
        before any handler runs, so the retry cannot act twice."""
        for attempt in (1, 2):
            metadata = self.metadata(audience)
            try:
                return method(request, metadata=metadata, timeout=timeout)
            except grpc.RpcError as exc:
                error = translate(what, exc)
                if attempt == 1 and status_code(error) == grpc.StatusCode.UNAUTHENTICATED:
                    self.forget(audience)
                    continue
                raise error from None
        raise AssertionError("unreachable")

    def _issue(self, audience: Audience) -> Token:
        challenge = call(
            "identity Challenge",
            lambda: self._stub.Challenge(
                identity_pb2.ChallengeRequest(identity_id=self.identity_id, key_id=self.key_id), timeout=DEFAULT_TIMEOUT_S
            ),
        )
        expected = challenge_message(self.identity_id, challenge.nonce)
        if challenge.message != expected:
            raise errors.PermissionDenied(
                "identity Challenge: the service asked to sign something other than the documented challenge; refused"
            )
        request = identity_pb2.IssueTokenRequest(
            identity_id=self.identity_id, nonce=challenge.nonce, signature=self.key.sign(expected), key_id=self.key_id,
            audience=list(audience),
        )
        started, started_unix = self._clock(), time.time()
        reply = call("identity IssueToken", lambda: self._stub.IssueToken(request, timeout=DEFAULT_TIMEOUT_S))
        lifetime = _lifetime_s(reply.token, float(reply.expires_at.seconds), started_unix)
        margin = min(self._margin, lifetime / 5)
        return Token(reply.token, started + lifetime - margin)
