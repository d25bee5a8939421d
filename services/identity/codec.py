"""Translation between the domain's dataclasses and identity.proto messages:
event payloads and envelopes both ways, states to API replies.

Kept apart from the domain so the core stays free of protobuf plumbing, and
from the servicer so the projection rebuild uses the very same mapping.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from medledger.identity import domain
from medledger.identity.domain import Acceptance, Event, Identity, Key, Kind, Membership
from medledger.runtime.enums import enum_name
from medledger.runtime.errors import InvalidArgument
from medledger.runtime.envelope import envelope
from medledger.v1 import events_pb2, identity_pb2

PRODUCER = "identity"


def kind_from_proto(value: int) -> Kind:
    """The domain kind for an IdentityKind number; InvalidArgument for
    IDENTITY_KIND_UNSPECIFIED or a number this server does not know."""
    name = enum_name(identity_pb2.IdentityKind, value)
    if name not in Kind.__members__:
        raise InvalidArgument(f"kind must be one of {', '.join(Kind.__members__)}, got {value}")
    return Kind(name)


def kind_to_proto(kind: Kind) -> identity_pb2.IdentityKind.ValueType:
    return identity_pb2.IdentityKind.Value(kind.value)


def utc(ts: Timestamp) -> datetime:
    """A Timestamp as an aware UTC datetime; InvalidArgument outside the
    range datetime (and protobuf) can represent."""
    try:
        return ts.ToDatetime(tzinfo=timezone.utc)
    except (ValueError, OverflowError, OSError):
        raise InvalidArgument("timestamp out of range") from None


def reason_from_proto(value: int) -> str:
    """The RevocationReason name, '' for UNSPECIFIED or a number this server
    does not know (the domain refuses '' in commands)."""
    return enum_name(identity_pb2.RevocationReason, value) if value != 0 else ""


def reason_to_proto(reason: str) -> identity_pb2.RevocationReason.ValueType:
    known = reason in identity_pb2.RevocationReason.keys()
    return identity_pb2.RevocationReason.Value(reason) if known else identity_pb2.REVOCATION_REASON_UNSPECIFIED


def acceptance_from_proto(msg: identity_pb2.MembershipAcceptance) -> Acceptance:
    if not msg.HasField("accepted_at"):
        raise InvalidArgument("acceptance.accepted_at is required")
    return Acceptance(msg.key_id, utc(msg.accepted_at), msg.nonce, msg.signature)


def acceptance_message(a: Acceptance) -> identity_pb2.MembershipAcceptance:
    msg = identity_pb2.MembershipAcceptance(key_id=a.key_id, nonce=a.nonce, signature=a.signature)
    msg.accepted_at.FromDatetime(a.accepted_at)
    return msg


def _set_time(field: Timestamp, value: datetime | None) -> None:
    if value is not None:
        field.FromDatetime(value)


# ---- events ----------------------------------------------------------------------


def event_payload(event: Event) -> Message:
    """The identity.proto message for a domain event (no PHI by construction:
    the domain events hold none)."""
    if isinstance(event, domain.IdentityRegistered):
        return identity_pb2.IdentityRegistered(
            identity_id=event.identity_id, kind=kind_to_proto(event.kind), key_id=event.key_id,
            public_key=event.public_key, assurance_level=event.assurance_level,
            registered_by=event.registered_by, organization_type=event.organization_type,
        )
    if isinstance(event, domain.KeyRotated):
        return identity_pb2.KeyRotated(
            identity_id=event.identity_id, key_id=event.key_id, public_key=event.public_key,
            previous_key_id=event.previous_key_id,
        )
    if isinstance(event, domain.KeyRevoked):
        return identity_pb2.KeyRevoked(identity_id=event.identity_id, key_id=event.key_id)
    if isinstance(event, domain.IdentityRevoked):
        return identity_pb2.IdentityRevoked(identity_id=event.identity_id, reason=reason_to_proto(event.reason))
    if isinstance(event, domain.MembershipGranted):
        granted = identity_pb2.MembershipGranted(
            membership_id=event.membership_id, member_id=event.member_id,
            organization_id=event.organization_id, role=event.role,
        )
        if event.acceptance is not None:
            granted.acceptance.CopyFrom(acceptance_message(event.acceptance))
        return granted
    return identity_pb2.MembershipEnded(
        membership_id=event.membership_id, member_id=event.member_id, organization_id=event.organization_id
    )


def to_envelope(event: Event, actor: str) -> events_pb2.EventEnvelope:
    """The EventEnvelope for event: keyed by its aggregate, stamped with its time."""
    return envelope(
        event_payload(event), aggregate_id=domain.aggregate_of(event), producer=PRODUCER, actor=actor,
        occurred_at=event.at,
    )


def _registered(m: identity_pb2.IdentityRegistered, at: datetime) -> Event:
    return domain.IdentityRegistered(
        m.identity_id, kind_from_proto(m.kind), m.key_id, m.public_key, m.assurance_level, m.registered_by,
        m.organization_type, at,
    )


def _rotated(m: identity_pb2.KeyRotated, at: datetime) -> Event:
    return domain.KeyRotated(m.identity_id, m.key_id, m.public_key, m.previous_key_id, at)


def _key_revoked(m: identity_pb2.KeyRevoked, at: datetime) -> Event:
    return domain.KeyRevoked(m.identity_id, m.key_id, at)


def _identity_revoked(m: identity_pb2.IdentityRevoked, at: datetime) -> Event:
    return domain.IdentityRevoked(m.identity_id, reason_from_proto(m.reason), at)


def _granted(m: identity_pb2.MembershipGranted, at: datetime) -> Event:
    acceptance = acceptance_from_proto(m.acceptance) if m.HasField("acceptance") else None
    return domain.MembershipGranted(m.membership_id, m.member_id, m.organization_id, m.role, at, acceptance)


def _ended(m: identity_pb2.MembershipEnded, at: datetime) -> Event:
    return domain.MembershipEnded(m.membership_id, m.member_id, m.organization_id, at)


_DECODERS: dict[str, tuple[type[Message], Callable[..., Event]]] = {
    identity_pb2.IdentityRegistered.DESCRIPTOR.full_name: (identity_pb2.IdentityRegistered, _registered),
    identity_pb2.KeyRotated.DESCRIPTOR.full_name: (identity_pb2.KeyRotated, _rotated),
    identity_pb2.KeyRevoked.DESCRIPTOR.full_name: (identity_pb2.KeyRevoked, _key_revoked),
    identity_pb2.IdentityRevoked.DESCRIPTOR.full_name: (identity_pb2.IdentityRevoked, _identity_revoked),
    identity_pb2.MembershipGranted.DESCRIPTOR.full_name: (identity_pb2.MembershipGranted, _granted),
    identity_pb2.MembershipEnded.DESCRIPTOR.full_name: (identity_pb2.MembershipEnded, _ended),
}


def from_envelope(env: events_pb2.EventEnvelope) -> Event | None:
    """The domain event an envelope carries; None for a type this service does
    not produce (a newer version's event, skipped rather than fatal)."""
    decoder = _DECODERS.get(env.event_type)
    if decoder is None:
        return None
    message_type, build = decoder
    payload = message_type()
    if not env.payload.Unpack(payload):
        raise InvalidArgument(f"event {env.event_id}: payload is not a {env.event_type}")
    return build(payload, utc(env.occurred_at))


# ---- replies ---------------------------------------------------------------------


def key_message(identity_id: str, key: Key, at: datetime | None = None) -> identity_pb2.ResolvedKey:
    """A key as ResolvedKey; ``revoked`` as of ``at`` (default: ever)."""
    revoked = key.revoked_at is not None if at is None else key.revoked_by(at)
    msg = identity_pb2.ResolvedKey(
        identity_id=identity_id, key_id=key.key_id, public_key=key.public_key, revoked=revoked,
        previous_key_id=key.previous_key_id,
    )
    msg.valid_from.FromDatetime(key.valid_from)
    _set_time(msg.valid_until, key.valid_until)
    _set_time(msg.revoked_at, key.revoked_at)
    return msg


def membership_message(m: Membership) -> identity_pb2.Membership:
    msg = identity_pb2.Membership(
        membership_id=m.membership_id, organization_id=m.organization_id, role=m.role, active=m.active,
        member_id=m.member_id,
    )
    msg.granted_at.FromDatetime(m.granted_at)
    _set_time(msg.ended_at, m.ended_at)
    if m.acceptance is not None:
        msg.acceptance.CopyFrom(acceptance_message(m.acceptance))
    return msg


def identity_message(state: Identity, demographics: identity_pb2.Demographics | None = None) -> identity_pb2.Identity:
    current = state.current_key
    msg = identity_pb2.Identity(
        identity_id=state.identity_id,
        kind=kind_to_proto(state.kind),
        status=identity_pb2.IdentityStatus.Value(state.status.value),
        memberships=[membership_message(m) for m in state.memberships],
        assurance_level=state.assurance_level,
        registered_by=state.registered_by,
        organization_type=state.organization_type,
        revocation_reason=reason_to_proto(state.revocation_reason),
        keys=[key_message(state.identity_id, k) for k in state.keys],
        current_key_id=current.key_id if current else "",
    )
    msg.registered_at.FromDatetime(state.registered_at)
    _set_time(msg.revoked_at, state.revoked_at)
    if demographics is not None:
        msg.demographics.CopyFrom(demographics)
    return msg
