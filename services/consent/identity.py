"""What the consent service asks the identity service, behind a port so the
command rules can be tested without one.

Commands (grant, representatives) ask the identity service itself — the
authority on keys and identities, and current the moment it answers.
Decisions and break-glass read the projection of identity.events instead
(projection.py), which has no network hop on the hot path.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Protocol

from google.protobuf.timestamp_pb2 import Timestamp

from medledger.consent.domain import IdentityFacts
from medledger.consent.signing import SigningKey
from medledger.runtime.errors import NotFound
from medledger.runtime.identity_client import IdentityClient
from medledger.v1 import identity_pb2


class IdentityDirectory(Protocol):
    async def facts(self, identity_id: str) -> IdentityFacts:
        """NotFound for an unknown identity."""

    async def signing_key(self, identity_id: str, key_id: str, at: datetime) -> SigningKey:
        """The named key of identity_id as of at; NotFound if it has none."""


def _utc(ts: Timestamp, present: bool) -> datetime | None:
    return ts.ToDatetime(tzinfo=timezone.utc) if present else None


def facts_from_identity(identity: identity_pb2.Identity) -> IdentityFacts:
    active = frozenset(m.organization_id for m in identity.memberships if m.active)
    former = frozenset(m.organization_id for m in identity.memberships if not m.active)
    return IdentityFacts(
        identity_id=identity.identity_id,
        kind=identity_pb2.IdentityKind.Name(identity.kind),
        active=identity.status == identity_pb2.ACTIVE,
        organizations=active,
        former_organizations=former,
        registered_by=identity.registered_by,
    )


class IdentityServiceDirectory:
    """IdentityDirectory over gRPC, as the consent service's SERVICE identity."""

    def __init__(self, client: IdentityClient) -> None:
        self.client = client

    async def facts(self, identity_id: str) -> IdentityFacts:
        try:
            return facts_from_identity(await self.client.get_identity(identity_id))
        except NotFound:
            raise NotFound(f"{identity_id} is not a registered identity") from None

    async def signing_key(self, identity_id: str, key_id: str, at: datetime) -> SigningKey:
        try:
            key = await self.client.resolve_key(identity_id, at, key_id)
        except NotFound:
            raise NotFound(f"{identity_id} has no key {key_id}") from None
        return SigningKey(
            key_id=key.key_id,
            public_key=key.public_key,
            valid_from=key.valid_from.ToDatetime(tzinfo=timezone.utc),
            valid_until=_utc(key.valid_until, key.HasField("valid_until")),
            revoked_at=_utc(key.revoked_at, key.HasField("revoked_at")) or (at if key.revoked else None),
        )
