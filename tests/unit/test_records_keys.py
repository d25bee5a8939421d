"""Which key a signed record or erasure is checked against, now that records
resolves it from its projection of identity.events (records.domain.resolve_key)
instead of asking identity: the answer must be exactly ResolveKey's, for every
key id and time, so it is compared here with identity's own servicer over the
same history, and the rules a signer relies on are spelled out."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medledger.identity import domain as identity
from medledger.identity.api import IdentityApi
from medledger.records import domain
from medledger.runtime.errors import NotFound, PermissionDenied
from medledger.runtime.signed import SigningKey, verify_statement
from medledger.v1 import identity_pb2

T0 = datetime(2025, 3, 1, 9, tzinfo=timezone.utc)
MINUTE = timedelta(minutes=1)
PREFIX = b"medledger.v1.RecordAttestation\n"


def new_key() -> tuple[Ed25519PrivateKey, bytes, str]:
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes_raw()
    return private, public, identity.key_id_for(public)


K1, K2, K3 = new_key(), new_key(), new_key()


def history() -> identity.Identity:
    """Registered with k1 at T0, rotated to k2 at +10 min, k1 revoked at +20,
    rotated to k3 at +30, the identity revoked at +40."""
    events: list[identity.Event] = [
        identity.IdentityRegistered("doc", identity.Kind.PRACTITIONER, K1[2], K1[1], "IAL2", "org", "", T0),
        identity.KeyRotated("doc", K2[2], K2[1], K1[2], T0 + 10 * MINUTE),
        identity.KeyRevoked("doc", K1[2], T0 + 20 * MINUTE),
        identity.KeyRotated("doc", K3[2], K3[1], K2[2], T0 + 30 * MINUTE),
        identity.IdentityRevoked("doc", "AFFILIATION_CHANGED", T0 + 40 * MINUTE),
    ]
    state = identity.fold(events)
    assert state is not None
    return state


class OneIdentity:
    """identity's Registry as ResolveKey uses it: get() or NotFound."""

    def __init__(self, state: identity.Identity) -> None:
        self.state = state

    async def get(self, identity_id: str) -> identity.Identity:
        if identity_id != self.state.identity_id:
            raise NotFound(f"no identity {identity_id}")
        return self.state


def resolved_by_identity(state: identity.Identity, identity_id: str, key_id: str, at: datetime) -> SigningKey | None:
    """identity's ResolveKey servicer, and how records used to read its answer."""
    api = IdentityApi(OneIdentity(state), None)  # type: ignore[arg-type]
    request = identity_pb2.ResolveKeyRequest(identity_id=identity_id, key_id=key_id)
    request.at_time.FromDatetime(at)
    try:
        key = asyncio.run(api.ResolveKey(request, None))
    except NotFound:
        return None
    return SigningKey(
        key.key_id, key.public_key, key.valid_from.ToDatetime(tzinfo=timezone.utc),
        key.valid_until.ToDatetime(tzinfo=timezone.utc) if key.HasField("valid_until") else None,
        key.revoked_at.ToDatetime(tzinfo=timezone.utc) if key.HasField("revoked_at") else (at if key.revoked else None),
    )


def resolved_here(state: identity.Identity, identity_id: str, key_id: str, at: datetime) -> SigningKey | None:
    try:
        return domain.resolve_key(identity_id, identity_id == state.identity_id, state.keys, key_id, at)
    except NotFound:
        return None


@pytest.mark.parametrize("minutes", [-5, 0, 5, 10, 15, 20, 25, 30, 35, 40, 45])
@pytest.mark.parametrize("key_id", ["", K1[2], K2[2], K3[2], "0" * 32])
@pytest.mark.parametrize("identity_id", ["doc", "someone-else"])
def test_the_projected_answer_is_exactly_resolve_keys(identity_id: str, key_id: str, minutes: int) -> None:
    state, at = history(), T0 + minutes * MINUTE
    assert resolved_here(state, identity_id, key_id, at) == resolved_by_identity(state, identity_id, key_id, at)


def sign_at(private: Ed25519PrivateKey, message: bytes = b"attestation") -> tuple[bytes, bytes]:
    return PREFIX + message, private.sign(PREFIX + message)


def check(key_id: str, signer: Ed25519PrivateKey, signed_at: datetime) -> None:
    key = domain.resolve_key("doc", True, history().keys, key_id, signed_at)
    message, signature = sign_at(signer)
    verify_statement(key, signed_at, message, signature, "author signature")


def test_the_current_key_signs() -> None:
    check(K3[2], K3[0], T0 + 35 * MINUTE)


def test_a_rotated_out_key_signs_nothing_after_the_rotation_but_still_what_it_signed_before() -> None:
    with pytest.raises(PermissionDenied, match="not in effect at signed_at"):
        check(K2[2], K2[0], T0 + 31 * MINUTE)
    check(K2[2], K2[0], T0 + 29 * MINUTE)


def test_a_revoked_key_is_refused_even_for_a_signed_at_before_its_revocation() -> None:
    """Whoever stole it could backdate signed_at."""
    key = domain.resolve_key("doc", True, history().keys, K1[2], T0 + MINUTE)
    assert key.revoked_at == T0 + 20 * MINUTE and key.valid_until == T0 + 10 * MINUTE
    with pytest.raises(PermissionDenied, match="has been revoked"):
        check(K1[2], K1[0], T0 + MINUTE)


def test_another_identitys_key_or_an_unknown_identity_is_not_found() -> None:
    with pytest.raises(NotFound, match="has no key"):
        domain.resolve_key("doc", True, history().keys, identity.key_id_for(new_key()[1]), T0)
    with pytest.raises(NotFound, match="no identity"):
        domain.resolve_key("nobody", False, (), K1[2], T0)


def test_without_a_key_id_the_newest_key_in_effect_then_is_chosen() -> None:
    keys = history().keys
    assert domain.resolve_key("doc", True, keys, "", T0 + 5 * MINUTE).key_id == K1[2]
    assert domain.resolve_key("doc", True, keys, "", T0 + 10 * MINUTE).key_id == K2[2]
    with pytest.raises(NotFound, match="in effect at"):
        domain.resolve_key("doc", True, keys, "", T0 - MINUTE)


def test_revoking_the_identity_leaves_its_keys_as_resolve_key_does() -> None:
    """Writes and erasures refuse an inactive signer before they look at keys."""
    key: Any = domain.resolve_key("doc", True, history().keys, K3[2], T0 + 45 * MINUTE)
    assert key.revoked_at is None and key.valid_until is None
