"""How other services talk to the identity service (found at setting
MEDLEDGER_IDENTITY_ADDRESS).

* ``make_verifier(address)``: a TokenVerifier for the AuthInterceptor that
  fetches the identity service's token keys on first use and again when a
  token names a key it does not know (the identity service rotated its key).
* ``ServiceCredentials``: how a service proves it is a SERVICE identity. An
  operator registers the service once (``medledger identity keygen`` then
  ``medledger identity register --kind SERVICE``) and gives the service its
  identity id and private key file; the credentials answer a challenge, cache
  the token and get a new one a minute before it expires.
* ``IdentityClient``: the reads other services need (resolve_key,
  get_identity, verify_signature), authenticated with ServiceCredentials.

gRPC errors come back as MedLedger errors (NotFound, PermissionDenied, ...;
DependencyUnavailable when the identity service cannot be reached), so a
caller's handler maps them to the right status without thinking about it.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medledger.runtime import errors
from medledger.runtime.grpc_status import error_for
from medledger.runtime.transport import GrpcTls
from medledger.runtime.auth import TokenVerifier
from medledger.v1 import identity_pb2, identity_pb2_grpc

T = TypeVar("T")
CALL_TIMEOUT_S = 10.0
REFRESH_MARGIN_S = 60.0

async def _call(what: str, call: Callable[[], Awaitable[T]]) -> T:
    """Run one RPC, translating its failure into a MedLedger error."""
    try:
        return await call()
    except grpc.aio.AioRpcError as exc:
        error = error_for(exc.code())
        raise error(f"identity service, {what}: {exc.details()}") from None


async def fetch_verification_keys(address: str, timeout: float = CALL_TIMEOUT_S) -> dict[str, bytes]:
    """key id -> raw Ed25519 public key, from GetTokenVerificationKey (public)."""
    async with GrpcTls.from_env().aio_channel(address) as channel:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        reply = await _call(
            "GetTokenVerificationKey",
            lambda: stub.GetTokenVerificationKey(identity_pb2.GetTokenVerificationKeyRequest(), timeout=timeout),
        )
    return {k.key_id: k.public_key for k in reply.keys if k.algorithm == "EdDSA"}


def make_verifier(address: str) -> TokenVerifier:
    """A verifier that learns the identity service's keys lazily (first token
    seen) and refreshes on an unknown key id, at most once a second."""
    return TokenVerifier(refresh=lambda: fetch_verification_keys(address))


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file as ``medledger identity keygen`` writes it."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise errors.SettingsError(f"cannot read an Ed25519 private key from {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise errors.SettingsError(f"{path} does not hold an Ed25519 key")
    return key


class _Channel:
    """A grpc.aio channel opened lazily, inside the running event loop (grpc.aio
    binds a channel to the loop that created it)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._channel: grpc.aio.Channel | None = None

    def stub(self) -> identity_pb2_grpc.IdentityServiceStub:
        if self._channel is None:
            self._channel = GrpcTls.from_env().aio_channel(self.address)
        return identity_pb2_grpc.IdentityServiceStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


class ServiceCredentials(_Channel):
    """A token for one identity (typically a SERVICE), obtained by signing a
    challenge with its private key, cached and renewed before it expires."""

    def __init__(self, address: str, identity_id: str, private_key: Ed25519PrivateKey) -> None:
        super().__init__(address)
        self.identity_id = identity_id
        self.private_key = private_key
        self._token = ""
        self._expires = 0.0
        self._lock = asyncio.Lock()

    @classmethod
    def from_file(cls, address: str, identity_id: str, key_file: Path) -> "ServiceCredentials":
        return cls(address, identity_id, load_private_key(key_file))

    async def token(self) -> str:
        async with self._lock:
            if time.time() >= self._expires - REFRESH_MARGIN_S:
                await self._renew()
            return self._token

    async def _renew(self) -> None:
        stub = self.stub()
        challenge = await _call(
            "Challenge",
            lambda: stub.Challenge(identity_pb2.ChallengeRequest(identity_id=self.identity_id), timeout=CALL_TIMEOUT_S),
        )
        request = identity_pb2.IssueTokenRequest(
            identity_id=self.identity_id, nonce=challenge.nonce, signature=self.private_key.sign(challenge.message)
        )
        reply = await _call("IssueToken", lambda: stub.IssueToken(request, timeout=CALL_TIMEOUT_S))
        self._token = reply.token
        self._expires = float(reply.expires_at.seconds)

    async def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying the bearer token, for any MedLedger service."""
        return (("authorization", f"Bearer {await self.token()}"),)


class IdentityClient(_Channel):
    """The identity reads other services make, as the given credentials."""

    def __init__(self, address: str, credentials: ServiceCredentials) -> None:
        super().__init__(address)
        self.credentials = credentials

    async def _authed(self, what: str, method: Callable[..., Awaitable[T]], request: Any) -> T:
        metadata = await self.credentials.metadata()
        return await _call(what, lambda: method(request, metadata=metadata, timeout=CALL_TIMEOUT_S))

    async def resolve_key(
        self, identity_id: str, at: datetime | None = None, key_id: str = ""
    ) -> identity_pb2.ResolvedKey:
        """The key identity_id used at ``at`` (default now), or the named key.
        NotFound if it had none then. Check ``revoked`` before trusting it."""
        request = identity_pb2.ResolveKeyRequest(identity_id=identity_id, key_id=key_id)
        if at is not None:
            request.at_time.FromDatetime(at)
        return await self._authed("ResolveKey", self.stub().ResolveKey, request)

    async def get_identity(self, identity_id: str) -> identity_pb2.Identity:
        """Kind, status, memberships and keys (no demographics for a service)."""
        request = identity_pb2.GetIdentityRequest(identity_id=identity_id)
        return await self._authed("GetIdentity", self.stub().GetIdentity, request)

    async def verify_signature(
        self, identity_id: str, message: bytes, signature: bytes, at: datetime | None = None
    ) -> identity_pb2.VerifySignatureResponse:
        request = identity_pb2.VerifySignatureRequest(identity_id=identity_id, message=message, signature=signature)
        if at is not None:
            request.at_time.FromDatetime(at)
        return await self._authed("VerifySignature", self.stub().VerifySignature, request)

    async def close(self) -> None:
        await super().close()
        await self.credentials.close()
