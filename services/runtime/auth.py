"""Authentication shared by every service (docs/architecture.md, Security model).

The identity service issues short-lived EdDSA (Ed25519) JWTs after a signed
challenge; every service verifies them offline with the identity service's
published key. ``AuthInterceptor`` enforces this on every RPC except health,
reflection and the methods a service declares public, and makes the caller
available to handlers through ``current_caller()``. A token names the
services it is for (``aud``), and each service accepts only its own; a token
that verifies is still refused once its subject, its key or a membership it
lists was revoked since it was issued (``RevocationCheck``: identity asks its
database, the other services a feed of identity.events, runtime/revocations.py).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Collection, Mapping, Protocol

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from medledger.runtime.errors import PermissionDenied, Unauthenticated
from medledger.runtime.grpc_server import wrap_handler

ISSUER = "medledger-identity"
ALGORITHM = "EdDSA"
MAX_TOKEN_TTL_S = 15 * 60
ALWAYS_PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

KINDS = ("PATIENT", "PRACTITIONER", "ORGANIZATION", "AUDITOR", "SERVICE")
# An AUDITOR token's ``ascope`` claim, from who registered the auditor.
NETWORK_SCOPE, ORGANIZATION_SCOPE = "network", "organization"
NETWORK_AUDITOR, ORGANIZATION_AUDITOR = "NETWORK_AUDITOR", "ORGANIZATION_AUDITOR"
# The services a token may be for (its ``aud`` claim); each accepts only its own.
AUDIENCES = ("identity", "consent", "records", "ledger")


@dataclass(frozen=True)
class Caller:
    """Who is calling, as the token says: subject id, kind, the organizations
    where the subject had an active membership at issue, and what revocation
    checks need: the services it is for, when it was issued (``iat``) and the
    subject's key that answered the challenge (``akid``)."""

    subject: str
    kind: str
    organizations: tuple[str, ...] = ()
    token_id: str = ""
    audience: tuple[str, ...] = ()
    issued_at: int = 0
    key_id: str = ""
    # AUDITOR tokens only: "network" (registered by an operator: audits the
    # whole network) or "organization" (registered by an organization: audits
    # what concerns the organizations in ``organizations``).
    audit_scope: str = ""

    @property
    def role(self) -> str:
        """The kind, with auditors split by scope (NETWORK_AUDITOR,
        ORGANIZATION_AUDITOR): what the README's authorization matrix names."""
        if self.kind != "AUDITOR":
            return self.kind
        return NETWORK_AUDITOR if self.audit_scope == NETWORK_SCOPE else ORGANIZATION_AUDITOR

    def audits(self, organizations: Collection[str]) -> bool:
        """An auditor whose remit covers something of these organizations: a
        network auditor covers every one, an organization auditor its own."""
        if self.kind != "AUDITOR":
            return False
        return self.audit_scope == NETWORK_SCOPE or any(o in organizations for o in self.organizations)


class RevocationCheck(Protocol):
    """Refuses a verified token whose subject, key or listed membership was
    revoked since it was issued (raises the CallerError to answer)."""

    async def check(self, claims: Caller) -> None: ...


_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("medledger_caller", default=None)


def current_caller() -> Caller:
    """The authenticated caller of the RPC being handled."""
    caller = _caller.get()
    if caller is None:
        raise Unauthenticated("this method needs a bearer token")
    return caller


def mint_token(
    key: Ed25519PrivateKey, key_id: str, caller: Caller, ttl_s: int, now: float | None = None, token_id: str = ""
) -> str:
    """Sign a token for caller (used by the identity service only)."""
    if not 0 < ttl_s <= MAX_TOKEN_TTL_S:
        raise ValueError(f"token lifetime must be 1..{MAX_TOKEN_TTL_S} s")
    issued = int(now if now is not None else time.time())
    claims = {
        "iss": ISSUER,
        "sub": caller.subject,
        "kind": caller.kind,
        "orgs": list(caller.organizations),
        "aud": list(caller.audience),
        "akid": caller.key_id,
        **({"ascope": caller.audit_scope} if caller.audit_scope else {}),
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_s,
        "jti": token_id or caller.token_id,
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": key_id})


@dataclass
class TokenVerifier:
    """Verifies tokens offline against the identity service's published keys
    (key id -> Ed25519 public key). ``refresh`` is called when a token names a
    key id not known yet (the identity service rotated its key)."""

    keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    refresh: Callable[[], Awaitable[Mapping[str, bytes]]] | None = None
    leeway_s: int = 5
    min_refresh_interval_s: float = 1.0
    _last_refresh: float = float("-inf")
    _refreshing: "asyncio.Future[None] | None" = None

    def add_key(self, key_id: str, public_key: bytes) -> None:
        self.keys[key_id] = Ed25519PublicKey.from_public_bytes(public_key)

    async def _key_for(self, key_id: str) -> Ed25519PublicKey:
        if key_id not in self.keys and self.refresh:
            await self._refresh_keys()
        try:
            return self.keys[key_id]
        except KeyError:
            raise Unauthenticated(f"token signed by unknown key {key_id!r}") from None

    async def _refresh_keys(self) -> None:
        """Calls arriving together wait for one refresh instead of failing, and
        an unknown key id refreshes at most once per ``min_refresh_interval_s``
        (a flood of made-up key ids does not become a flood on identity). The
        refresh runs as a task of its own, shielded from its waiters: an RPC
        cancelled by its client while waiting (a read whose access check was
        refused) must not cancel the fetch the other callers wait for, nor
        leave the interval started with no keys learned."""
        if self._refreshing is None:
            if time.monotonic() - self._last_refresh < self.min_refresh_interval_s:
                return
            self._refreshing = asyncio.ensure_future(self._fetch_keys())
            # its failure reaches whoever still waits; none left is not an error
            self._refreshing.add_done_callback(lambda done: done.cancelled() or done.exception())
        await asyncio.shield(self._refreshing)

    async def _fetch_keys(self) -> None:
        assert self.refresh is not None
        try:
            for kid, raw in (await self.refresh()).items():
                self.add_key(kid, raw)
        finally:
            self._last_refresh = time.monotonic()
            self._refreshing = None

    async def verify(self, token: str, audience: str) -> Caller:
        """The caller a valid token names, if the token is for ``audience``."""
        caller = await self.claims(token)
        if audience not in caller.audience:
            raise Unauthenticated(f"the token is not for the {audience} service (its audience: {list(caller.audience)})")
        return caller

    async def claims(self, token: str) -> Caller:
        """Signature, issuer, lifetime and claims checked; audience not yet."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"malformed token: {exc}") from None
        if header.get("alg") != ALGORITHM:
            raise Unauthenticated("token must be signed with EdDSA")
        key = await self._key_for(str(header.get("kid", "")))
        try:
            claims = jwt.decode(
                token, key, algorithms=[ALGORITHM], issuer=ISSUER, leeway=self.leeway_s,
                options={"require": ["exp", "iat", "sub", "iss", "aud"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from None
        if claims["exp"] - claims["iat"] > MAX_TOKEN_TTL_S:
            raise Unauthenticated("token lifetime exceeds 15 minutes")
        kind = claims.get("kind")
        if kind not in KINDS:
            raise Unauthenticated(f"token has unknown identity kind {kind!r}")
        audience = claims["aud"]
        if isinstance(audience, str):
            audience = [audience]
        if not isinstance(audience, list) or not all(isinstance(a, str) for a in audience):
            raise Unauthenticated("token audience must be a list of service names")
        return Caller(
            str(claims["sub"]), str(kind), tuple(claims.get("orgs", ())), str(claims.get("jti", "")),
            tuple(audience), int(claims["iat"]), str(claims.get("akid", "")),
            # an auditor token without a known scope is an organization auditor's: the narrower remit
            NETWORK_SCOPE if kind == "AUDITOR" and claims.get("ascope") == NETWORK_SCOPE
            else ORGANIZATION_SCOPE if kind == "AUDITOR" else "",
        )


def bearer_token(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() == "bearer" and token:
                return token.strip()
            raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires a valid bearer token on every method but health, reflection and
    ``public`` ones: for this service's ``audience`` and not revoked since
    issue (``revocations``). ``allowed_kinds`` maps a full method name
    (``/medledger.v1.X/Method``) to the identity kinds that may call it
    (``AUDITOR`` for both, or a role: NETWORK_AUDITOR, ORGANIZATION_AUDITOR);
    methods not listed are open to any authenticated caller. On a public method
    a valid token is still read, so handlers can tell who asks."""

    def __init__(
        self,
        verifier: TokenVerifier,
        public: Collection[str] = (),
        allowed_kinds: Mapping[str, Collection[str]] | None = None,
        *,
        audience: str,
        revocations: RevocationCheck,
    ) -> None:
        if audience not in AUDIENCES:
            raise ValueError(f"audience must be one of {AUDIENCES}")
        self.verifier = verifier
        self.public = set(public)
        self.allowed_kinds = dict(allowed_kinds or {})
        self.audience = audience
        self.revocations = revocations

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        if handler is None or method.startswith(ALWAYS_PUBLIC_PREFIXES):
            return handler
        is_public = method in self.public
        if is_public and not any(key == "authorization" for key, _ in details.invocation_metadata or ()):
            return handler  # nothing to check: spare the hot public reads (proofs) the wrapping
        kinds = self.allowed_kinds.get(method)

        async def authenticate(request: Any, context: grpc.aio.ServicerContext) -> None:
            token = bearer_token(context.invocation_metadata())
            if token is None:
                if is_public:
                    return
                raise Unauthenticated(f"{method} needs a bearer token (authorization: Bearer <token>)")
            caller = await self.verifier.verify(token, self.audience)
            await self.revocations.check(caller)
            if kinds is not None and caller.kind not in kinds and caller.role not in kinds and not is_public:
                raise PermissionDenied(f"a {caller.role} may not call {method}")
            _caller.set(caller)

        return wrap_handler(handler, authenticate)
