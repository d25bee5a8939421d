"""Which bearer tokens stop counting before they expire (docs/architecture.md,
Security model). Pure: fed envelopes, asked about tokens; no Kafka, no gRPC.

Tokens are verified offline, so on its own a token stays good until ``exp``
(at most 15 minutes). A token is refused earlier when, since it was issued:

* its subject was revoked: PERMISSION_DENIED, the identity gets no new token;
* the key that answered its challenge (claim ``akid``) was revoked:
  UNAUTHENTICATED, whoever stole the key must not keep the session;
* an organization it lists in ``orgs`` is no longer one of the subject's
  memberships: UNAUTHENTICATED, a new token does not list it.

The identity service answers these from its own database
(``identity/token_check.py``); every other service keeps a
``RevocationList`` fed from identity.events (``runtime/revocation_feed.py``).
Both use ``refusal`` so the answer is the same wherever a token is shown.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Collection, Hashable, Protocol, TypeVar

from google.protobuf.message import DecodeError, Message

from medledger.runtime.errors import CallerError, PermissionDenied, Unauthenticated
from medledger.v1 import events_pb2, identity_pb2


class TokenClaims(Protocol):
    """What a verified token says that revocation depends on (auth.Caller)."""

    @property
    def subject(self) -> str: ...

    @property
    def key_id(self) -> str: ...

    @property
    def organizations(self) -> tuple[str, ...]: ...

    @property
    def issued_at(self) -> int: ...


def refusal(
    claims: TokenClaims, *, subject_revoked: bool, key_revoked: bool, ended: Collection[str]
) -> CallerError | None:
    """Why a token that verified must still be refused, or None. ``ended``: the
    organizations it lists whose membership ended since it was issued."""
    if subject_revoked:
        return PermissionDenied(f"identity {claims.subject} has been revoked; its tokens are void")
    if key_revoked:
        return Unauthenticated("the key this token was obtained with has been revoked; authenticate again")
    if ended:
        return Unauthenticated(
            f"the token lists organization {sorted(ended)[0]}, whose membership has ended; get a new token"
        )
    return None


_TYPE = "medledger.v1."
_REVOKED, _KEY_REVOKED = _TYPE + "IdentityRevoked", _TYPE + "KeyRevoked"
_GRANTED, _ENDED = _TYPE + "MembershipGranted", _TYPE + "MembershipEnded"
# The identity.events types a RevocationList folds (the rest, registrations
# and key rotations, it ignores, so its feed does not verify them).
FOLDED_TYPES = frozenset({_REVOKED, _KEY_REVOKED, _GRANTED, _ENDED})


@dataclass
class RevocationList:
    """The revocations of the last ``retention`` seconds, from identity.events
    (envelopes already verified). Older ones cannot matter: every token issued
    before them has expired, and none is issued after a revocation, so memory
    stays bounded by recent activity, not by history."""

    retention: timedelta
    # Each table is kept in the order its entries were last noted (roughly
    # time order), so prune drops expired ones from the front and stops at
    # the first live one: O(what it forgets), not O(the table), on every probe.
    revoked_identities: OrderedDict[str, datetime] = field(default_factory=OrderedDict)
    revoked_keys: OrderedDict[tuple[str, str], datetime] = field(default_factory=OrderedDict)
    # (member, organization) -> when its membership ended; dropped on a new grant.
    ended_memberships: OrderedDict[tuple[str, str], datetime] = field(default_factory=OrderedDict)

    def apply(self, env: events_pb2.EventEnvelope) -> None:
        """Fold one verified identity.events envelope; other types are ignored.
        DecodeError for a payload that is not its declared type."""
        at = env.occurred_at.ToDatetime()
        kind = env.event_type
        if kind == _REVOKED:
            _note(self.revoked_identities, _unpack(env, identity_pb2.IdentityRevoked()).identity_id, at)
        elif kind == _KEY_REVOKED:
            key = _unpack(env, identity_pb2.KeyRevoked())
            _note(self.revoked_keys, (key.identity_id, key.key_id), at)
        elif kind == _ENDED:
            ended = _unpack(env, identity_pb2.MembershipEnded())
            _note(self.ended_memberships, (ended.member_id, ended.organization_id), at)
        elif kind == _GRANTED:
            granted = _unpack(env, identity_pb2.MembershipGranted())
            self.ended_memberships.pop((granted.member_id, granted.organization_id), None)

    def refusal(self, claims: TokenClaims) -> CallerError | None:
        ended = [
            org for org in claims.organizations
            if (end := self.ended_memberships.get((claims.subject, org))) is not None
            and claims.issued_at <= _seconds(end)
        ]
        return refusal(
            claims,
            subject_revoked=claims.subject in self.revoked_identities,
            key_revoked=(claims.subject, claims.key_id) in self.revoked_keys,
            ended=ended,
        )

    def prune(self, now: datetime) -> None:
        """Forget what no unexpired token can be affected by (``now`` naive UTC,
        as event times are)."""
        horizon = now - self.retention
        _forget_before(self.revoked_identities, horizon)
        _forget_before(self.revoked_keys, horizon)
        _forget_before(self.ended_memberships, horizon)

    def __len__(self) -> int:
        return len(self.revoked_identities) + len(self.revoked_keys) + len(self.ended_memberships)


def _seconds(at: datetime) -> float:
    """Seconds since the epoch of a naive UTC datetime."""
    return (at - datetime(1970, 1, 1)).total_seconds()


K = TypeVar("K", bound=Hashable)
M = TypeVar("M", bound=Message)


def _note(table: OrderedDict[K, datetime], key: K, at: datetime) -> None:
    table[key] = at
    table.move_to_end(key)


def _forget_before(table: OrderedDict[K, datetime], horizon: datetime) -> None:
    """Drop expired entries from the oldest noted on, up to the first one still
    live. An entry noted out of time order waits behind a newer one: it is kept
    longer than needed, never shorter, which refuses no more than a token's
    lifetime allows. (Scanning the whole table on every probe made the ledger's
    event loop stall for seconds once identity.events carried 250,000 recent
    revocations.)"""
    while table:
        key, at = next(iter(table.items()))
        if at >= horizon:
            return
        del table[key]


def _unpack(env: events_pb2.EventEnvelope, message: M) -> M:
    if not env.payload.Unpack(message):
        raise DecodeError(f"payload of {env.event_id} is not a {env.event_type}")
    return message
