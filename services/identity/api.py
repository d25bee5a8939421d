"""IdentityService over gRPC: a thin adapter from identity.proto to the
registry (commands, reads) and the authenticator (challenges, tokens).

Who may call what: Challenge, IssueToken and GetTokenVerificationKey are
public (they are how a caller gets a token); every other method needs a token
(AuthInterceptor). RegisterIdentity, GrantMembership and FindPatientByMrn are
for ORGANIZATION tokens only; finer rules (operators, own keys, own members)
are decided in the domain against current state.
"""

from __future__ import annotations

from datetime import datetime
from typing import TypeAlias

import grpc

from medledger.identity import codec, domain
from medledger.identity.authn import Authenticator
from medledger.identity.registry import Registration, Registry, now
from medledger.runtime.auth import current_caller
from medledger.runtime.errors import InvalidArgument
from medledger.v1 import identity_pb2, identity_pb2_grpc

SERVICE = "/medledger.v1.IdentityService/"
PUBLIC_METHODS = frozenset(SERVICE + m for m in ("Challenge", "IssueToken", "GetTokenVerificationKey"))
ALLOWED_KINDS: dict[str, frozenset[str]] = {
    SERVICE + m: frozenset({domain.Kind.ORGANIZATION.value})
    for m in ("RegisterIdentity", "GrantMembership", "FindPatientByMrn")
}

Context: TypeAlias = "grpc.aio.ServicerContext[object, object]"


def _required(value: str, name: str) -> str:
    if not value:
        raise InvalidArgument(f"{name} is required")
    return value


def _time(msg: identity_pb2.ResolveKeyRequest | identity_pb2.VerifySignatureRequest) -> datetime:
    return codec.utc(msg.at_time) if msg.HasField("at_time") else now()


class IdentityApi(identity_pb2_grpc.IdentityServiceServicer):
    def __init__(self, registry: Registry, authenticator: Authenticator) -> None:
        self.registry = registry
        self.authenticator = authenticator

    async def RegisterIdentity(self, request: identity_pb2.RegisterIdentityRequest, context: Context) -> identity_pb2.RegisterIdentityResponse:
        registration = Registration(
            kind=codec.kind_from_proto(request.kind),
            public_key=request.public_key,
            assurance_level=request.assurance_level,
            organization_type=request.organization_type,
            demographics=request.demographics if request.HasField("demographics") else None,
            medical_record_number=request.medical_record_number,
        )
        outcome = await self.registry.register(current_caller(), registration)
        return identity_pb2.RegisterIdentityResponse(
            identity=codec.identity_message(outcome.state), event_ids=outcome.event_ids
        )

    async def GetIdentity(self, request: identity_pb2.GetIdentityRequest, context: Context) -> identity_pb2.Identity:
        state, demographics = await self.registry.view(current_caller(), _required(request.identity_id, "identity_id"))
        return codec.identity_message(state, demographics)

    async def FindPatientByMrn(self, request: identity_pb2.FindPatientByMrnRequest, context: Context) -> identity_pb2.Identity:
        caller = current_caller()
        identity_id = await self.registry.find_patient(caller, request.medical_record_number)
        state, demographics = await self.registry.view(caller, identity_id)
        return codec.identity_message(state, demographics)

    async def ResolveKey(self, request: identity_pb2.ResolveKeyRequest, context: Context) -> identity_pb2.ResolvedKey:
        state = await self.registry.get(_required(request.identity_id, "identity_id"))
        at = _time(request)
        return codec.key_message(state.identity_id, domain.resolve_key(state.identity_id, state.keys, request.key_id, at), at)

    async def VerifySignature(self, request: identity_pb2.VerifySignatureRequest, context: Context) -> identity_pb2.VerifySignatureResponse:
        state = await self.registry.get(_required(request.identity_id, "identity_id"))
        valid, key_id = domain.verify_signature_at(state, request.message, request.signature, _time(request), request.key_id)
        return identity_pb2.VerifySignatureResponse(valid=valid, key_id=key_id)

    async def RotateKey(self, request: identity_pb2.RotateKeyRequest, context: Context) -> identity_pb2.RotateKeyResponse:
        identity_id = _required(request.identity_id, "identity_id")
        outcome = await self.registry.rotate_key(current_caller(), identity_id, request.public_key)
        key = codec.key_message(identity_id, outcome.state.keys[-1])
        return identity_pb2.RotateKeyResponse(key=key, event_ids=outcome.event_ids)

    async def RevokeKey(self, request: identity_pb2.RevokeKeyRequest, context: Context) -> identity_pb2.RevokeKeyResponse:
        identity_id = _required(request.identity_id, "identity_id")
        outcome = await self.registry.revoke_key(current_caller(), identity_id, _required(request.key_id, "key_id"))
        key = outcome.state.key(request.key_id)
        assert key is not None
        return identity_pb2.RevokeKeyResponse(key=codec.key_message(identity_id, key), event_ids=outcome.event_ids)

    async def RevokeIdentity(self, request: identity_pb2.RevokeIdentityRequest, context: Context) -> identity_pb2.RevokeIdentityResponse:
        identity_id = _required(request.identity_id, "identity_id")
        outcome = await self.registry.revoke_identity(current_caller(), identity_id, codec.reason_from_proto(request.reason))
        return identity_pb2.RevokeIdentityResponse(
            identity=codec.identity_message(outcome.state), event_ids=outcome.event_ids
        )

    async def GrantMembership(self, request: identity_pb2.GrantMembershipRequest, context: Context) -> identity_pb2.GrantMembershipResponse:
        acceptance = codec.acceptance_from_proto(request.acceptance) if request.HasField("acceptance") else None
        outcome = await self.registry.grant_membership(
            current_caller(), _required(request.member_id, "member_id"),
            _required(request.organization_id, "organization_id"), request.role, acceptance,
        )
        membership = codec.membership_message(outcome.state.memberships[-1])
        return identity_pb2.GrantMembershipResponse(membership=membership, event_ids=outcome.event_ids)

    async def EndMembership(self, request: identity_pb2.EndMembershipRequest, context: Context) -> identity_pb2.EndMembershipResponse:
        membership_id = _required(request.membership_id, "membership_id")
        outcome = await self.registry.end_membership(current_caller(), membership_id)
        ended = outcome.state.membership(membership_id)
        assert ended is not None
        return identity_pb2.EndMembershipResponse(
            membership=codec.membership_message(ended), event_ids=outcome.event_ids
        )

    async def Challenge(self, request: identity_pb2.ChallengeRequest, context: Context) -> identity_pb2.ChallengeResponse:
        challenge = await self.authenticator.challenge(
            _required(request.identity_id, "identity_id"), request.key_id, context.peer() or ""
        )
        reply = identity_pb2.ChallengeResponse(nonce=challenge.nonce, message=challenge.message, key_id=challenge.key_id)
        reply.expires_at.FromDatetime(challenge.expires_at)
        return reply

    async def IssueToken(self, request: identity_pb2.IssueTokenRequest, context: Context) -> identity_pb2.IssueTokenResponse:
        issued = await self.authenticator.issue_token(
            _required(request.identity_id, "identity_id"), request.nonce, request.signature, request.audience,
            request.key_id,
        )
        reply = identity_pb2.IssueTokenResponse(token=issued.token)
        reply.expires_at.FromDatetime(issued.expires_at)
        return reply

    async def GetTokenVerificationKey(self, request: identity_pb2.GetTokenVerificationKeyRequest, context: Context) -> identity_pb2.TokenVerificationKeys:
        keys = [
            identity_pb2.TokenKey(key_id=kid, public_key=raw, algorithm="EdDSA")
            for kid, raw in self.authenticator.keys.published().items()
        ]
        return identity_pb2.TokenVerificationKeys(keys=keys)
