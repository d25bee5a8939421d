"""How other services talk to the identity service (found at setting
MEDLEDGER_IDENTITY_ADDRESS).

* ``make_verifier(address)``: a TokenVerifier for the AuthInterceptor. Its
  keys come from the pinned ``MEDLEDGER_TOKEN_VERIFICATION_KEYS_FILE`` when
  set; otherwise they are fetched from the identity service on first use and
  again when a token names a key it does not know (the identity service
  rotated its key), but only over TLS, on loopback, or when
  ``MEDLEDGER_GRPC_ALLOW_PLAINTEXT=true`` states that a mesh provides mutual
  TLS: whoever answers a plaintext fetch could mint any token.
* ``ServiceCredentials``: how a service proves it is a SERVICE identity. An
  operator registers the service once (``medledger identity keygen`` then
  ``medledger identity register --kind SERVICE``) and gives the service its
  identity id and private key file; the credentials answer a challenge for the
  audience named (the service the token is for), cache the token and get a
  new one a minute before it expires.
* ``IdentityClient``: the reads other services need (resolve_key,
  get_identity, verify_signature), authenticated with ServiceCredentials.

gRPC errors come back as MedLedger errors (NotFound, PermissionDenied, ...;
DependencyUnavailable when the identity service cannot be reached), so a
caller's handler maps them to the right status without thinking about it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, Sequence, TypeVar

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medledger.identity.domain import key_id_for
from medledger.runtime import errors
from medledger.runtime.grpc_status import error_for
from medledger.runtime.settings import env_str
from medledger.runtime.transport import GrpcTls, LazyStub, is_loopback
from medledger.runtime.auth import AUDIENCES, TokenVerifier
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


PINNED_KEYS_SETTING = "MEDLEDGER_TOKEN_VERIFICATION_KEYS_FILE"
V = TypeVar("V", bound=TokenVerifier)


def _host(address: str) -> str:
    host = address.rpartition(":")[0] if ":" in address else address
    return host.strip("[]")


def check_key_fetch(address: str, tls: GrpcTls) -> None:
    """SettingsError unless token keys may be fetched from address: over TLS,
    on loopback, or through a mesh the operator says provides mutual TLS."""
    if tls.channel_credentials() is None and not is_loopback(_host(address)) and not tls.allow_plaintext:
        raise errors.SettingsError(
            f"refusing to fetch token verification keys from {address} in plaintext: set "
            f"MEDLEDGER_GRPC_TLS_CA_FILE (TLS to the identity service) or pin the keys in {PINNED_KEYS_SETTING}"
        )


def parse_pinned_keys(text: str, where: str) -> dict[str, bytes]:
    """key id -> raw key from lines of base64 raw Ed25519 public keys (blank
    lines and # comments ignored), as ``medledger identity token-keys`` prints."""
    keys: dict[str, bytes] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            raw = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            raise errors.SettingsError(f"{where}, line {number}: not a base64 raw 32-byte Ed25519 public key")
        keys[key_id_for(raw)] = raw  # token key ids are derived like identity key ids
    if not keys:
        raise errors.SettingsError(f"{where} lists no token verification key")
    return keys


async def fetch_verification_keys(address: str, timeout: float = CALL_TIMEOUT_S) -> dict[str, bytes]:
    """key id -> raw Ed25519 public key, from GetTokenVerificationKey (public).
    SettingsError where that would be plaintext off loopback (check_key_fetch)."""
    tls = GrpcTls.from_env()
    check_key_fetch(address, tls)
    async with tls.aio_channel(address) as channel:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        reply = await _call(
            "GetTokenVerificationKey",
            lambda: stub.GetTokenVerificationKey(identity_pb2.GetTokenVerificationKeyRequest(), timeout=timeout),
        )
    return {k.key_id: k.public_key for k in reply.keys if k.algorithm == "EdDSA"}


def token_verifier(address: str, kind: type[V], env: Mapping[str, str] | None = None) -> V:
    """A ``kind`` of verifier with the pinned keys when
    MEDLEDGER_TOKEN_VERIFICATION_KEYS_FILE is set (never fetching), else one
    that learns the identity service's keys lazily (first token seen) and
    refreshes on an unknown key id, at most once a second. SettingsError at
    once when neither pinned keys nor a safe fetch are possible."""
    pinned = env_str(PINNED_KEYS_SETTING, "", env)
    if pinned:
        try:
            text = Path(pinned).read_text()
        except OSError as exc:
            raise errors.SettingsError(f"{PINNED_KEYS_SETTING}={pinned} cannot be read ({exc.strerror})") from None
        verifier = kind()
        for key_id, raw in parse_pinned_keys(text, f"{PINNED_KEYS_SETTING}={pinned}").items():
            verifier.add_key(key_id, raw)
        return verifier
    check_key_fetch(address, GrpcTls.from_env(env))
    return kind(refresh=lambda: fetch_verification_keys(address))


def make_verifier(address: str) -> TokenVerifier:
    """A TokenVerifier for the identity service at address (see token_verifier)."""
    return token_verifier(address, TokenVerifier)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file as ``medledger identity keygen`` writes it."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise errors.SettingsError(f"cannot read an Ed25519 private key from {path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise errors.SettingsError(f"{path} does not hold an Ed25519 key")
    return key


class _Channel(LazyStub[identity_pb2_grpc.IdentityServiceStub]):
    """The identity service, reached lazily (transport.LazyStub)."""

    def __init__(self, address: str) -> None:
        super().__init__(address, identity_pb2_grpc.IdentityServiceStub)


class ServiceCredentials(_Channel):
    """A token for one identity (typically a SERVICE) and the services it
    calls (``audience``, explicit: no default), obtained by signing a
    challenge with its private key, cached and renewed before it expires."""

    def __init__(
        self, address: str, identity_id: str, private_key: Ed25519PrivateKey, *, audience: Sequence[str]
    ) -> None:
        super().__init__(address)
        if not audience or any(a not in AUDIENCES for a in audience):
            raise ValueError(f"audience must name one or more of {AUDIENCES}")
        self.identity_id = identity_id
        self.private_key = private_key
        self.audience = tuple(audience)
        self._token = ""
        self._expires = 0.0
        self._lock = asyncio.Lock()

    @classmethod
    def from_file(
        cls, address: str, identity_id: str, key_file: Path, *, audience: Sequence[str]
    ) -> "ServiceCredentials":
        return cls(address, identity_id, load_private_key(key_file), audience=audience)

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
            identity_id=self.identity_id, nonce=challenge.nonce, signature=self.private_key.sign(challenge.message),
            audience=self.audience,
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
        if "identity" not in credentials.audience:
            raise ValueError("IdentityClient needs credentials whose audience includes 'identity'")
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
