"""medledger.client.Session: a token from the identity's key on first use,
reused while fresh, renewed before it expires, per audience; the key signs
nothing but the documented challenge; a refused token is replaced once.

The identity service here is a stand-in that mints real tokens with the
runtime's own minting code, so what is tested is the client's behaviour
around the handshake, not the identity service (its tests cover that)."""

from __future__ import annotations

import itertools
import secrets
import time

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medledger.client import Session
from medledger.identity.domain import challenge_message, key_id_for
from medledger.runtime import errors
from medledger.runtime.auth import Caller, mint_token
from medledger.v1 import identity_pb2

IDENTITY = "0190d6a4-0000-7000-8000-000000000001"
RECORDS, CONSENT = ("records", "consent"), ("consent",)


class Refused(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class FakeIdentity:
    """Challenge/IssueToken as the identity service answers them; records
    what it was asked to verify."""

    def __init__(self, ttl_s: int = 600, tamper_message: bool = False) -> None:
        self.token_key = Ed25519PrivateKey.generate()
        self.ttl_s = ttl_s
        self.tamper_message = tamper_message
        self.issued: list[identity_pb2.IssueTokenRequest] = []
        self.nonces: dict[bytes, str] = {}
        self.numbers = itertools.count()

    def Challenge(self, request: identity_pb2.ChallengeRequest, timeout: float) -> identity_pb2.ChallengeResponse:
        nonce = secrets.token_bytes(32)
        self.nonces[nonce] = request.identity_id
        message = challenge_message(request.identity_id, nonce)
        if self.tamper_message:
            message = b"medledger.v1.ConsentTerms\n" + message
        return identity_pb2.ChallengeResponse(nonce=nonce, message=message, key_id=request.key_id)

    def IssueToken(self, request: identity_pb2.IssueTokenRequest, timeout: float) -> identity_pb2.IssueTokenResponse:
        self.issued.append(request)
        subject = self.nonces.pop(request.nonce)
        token = mint_token(self.token_key, "k", Caller(subject, "PRACTITIONER", token_id=str(next(self.numbers))), self.ttl_s)
        reply = identity_pb2.IssueTokenResponse(token=token)
        reply.expires_at.seconds = int(time.time()) + self.ttl_s
        return reply


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def session(identity: FakeIdentity, key: Ed25519PrivateKey, clock: Clock) -> Session:
    return Session(identity, IDENTITY, key, clock=clock)  # type: ignore[arg-type]


def test_a_token_is_obtained_by_signing_the_challenge_and_reused_while_fresh() -> None:
    identity, key, clock = FakeIdentity(), Ed25519PrivateKey.generate(), Clock()
    s = session(identity, key, clock)
    first = s.token(RECORDS)
    clock.now += 500  # 600 s token, renewed 60 s before the end
    assert s.token(RECORDS) == first
    assert len(identity.issued) == 1
    request = identity.issued[0]
    key.public_key().verify(request.signature, challenge_message(IDENTITY, request.nonce))
    assert request.key_id == key_id_for(key.public_key().public_bytes_raw())
    assert list(request.audience) == ["records", "consent"]
    assert jwt.decode(first, options={"verify_signature": False})["sub"] == IDENTITY


def test_the_token_is_renewed_before_it_expires() -> None:
    identity, clock = FakeIdentity(ttl_s=600), Clock()
    s = session(identity, Ed25519PrivateKey.generate(), clock)
    first = s.token(RECORDS)
    clock.now += 541  # inside the last 60 s
    second = s.token(RECORDS)
    assert second != first and len(identity.issued) == 2
    assert s.metadata(RECORDS) == (("authorization", f"Bearer {second}"),)


def test_short_tokens_are_renewed_at_four_fifths_of_their_life() -> None:
    identity, clock = FakeIdentity(ttl_s=10), Clock()
    s = session(identity, Ed25519PrivateKey.generate(), clock)
    first = s.token(CONSENT)
    clock.now += 7.9
    assert s.token(CONSENT) == first
    clock.now += 0.2
    assert s.token(CONSENT) != first


def test_each_audience_has_its_own_token() -> None:
    identity, clock = FakeIdentity(), Clock()
    s = session(identity, Ed25519PrivateKey.generate(), clock)
    s.token(RECORDS)
    s.token(CONSENT)
    s.token(RECORDS)
    assert len(identity.issued) == 2


def test_the_key_signs_nothing_but_the_documented_challenge() -> None:
    identity = FakeIdentity(tamper_message=True)
    s = session(identity, Ed25519PrivateKey.generate(), Clock())
    with pytest.raises(errors.PermissionDenied, match="documented challenge"):
        s.token(RECORDS)
    assert identity.issued == []


def test_a_refused_token_is_replaced_once_and_other_errors_are_raised_as_medledger_errors() -> None:
    identity, clock = FakeIdentity(), Clock()
    s = session(identity, Ed25519PrivateKey.generate(), clock)
    seen: list[str] = []

    def rpc(request: object, metadata: tuple[tuple[str, str], ...], timeout: float) -> str:
        seen.append(metadata[0][1])
        if len(seen) == 1:
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, "token signed by unknown key")
        return "answer"

    assert s.call("records GetRecord", RECORDS, rpc, object()) == "answer"
    assert len(set(seen)) == 2 and len(identity.issued) == 2

    def denied(request: object, metadata: tuple[tuple[str, str], ...], timeout: float) -> str:
        raise Refused(grpc.StatusCode.PERMISSION_DENIED, "not yours")

    with pytest.raises(errors.PermissionDenied, match="records GetRecord: PERMISSION_DENIED: not yours"):
        s.call("records GetRecord", RECORDS, denied, object())
    assert len(identity.issued) == 2  # no new token for a refusal that is not about the token

    def always_unauthenticated(request: object, metadata: tuple[tuple[str, str], ...], timeout: float) -> str:
        raise Refused(grpc.StatusCode.UNAUTHENTICATED, "token expired")

    with pytest.raises(errors.Unauthenticated):
        s.call("records GetRecord", RECORDS, always_unauthenticated, object())


def test_an_unreachable_service_is_dependency_unavailable() -> None:
    s = session(FakeIdentity(), Ed25519PrivateKey.generate(), Clock())

    def down(request: object, metadata: tuple[tuple[str, str], ...], timeout: float) -> str:
        raise Refused(grpc.StatusCode.UNAVAILABLE, "connection refused")

    with pytest.raises(errors.DependencyUnavailable) as info:
        s.call("records GetRecord", RECORDS, down, object())
    assert info.value.retriable
