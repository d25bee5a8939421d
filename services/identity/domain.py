"""The identity service's pure core: identities, their keys and memberships.

``decide(state, command) -> events`` checks a command against the current state
of one identity (the aggregate) and says what happened; ``evolve(state, event)
-> state`` folds an event into that state. Neither does I/O: the store loads
the states a command needs (the target, the caller, the organization) and
persists what ``evolve`` returns, so the same fold serves live commands and the
rebuild of the projection from identity.events.

Authority rules live here, not in the gRPC layer, because they depend on state
a token cannot carry (a caller revoked after its token was issued, the
organization that registered a practitioner):

* PATIENT, PRACTITIONER: registered by any active ORGANIZATION.
* ORGANIZATION, SERVICE: registered by an active OPERATOR organization.
* AUDITOR: registered by an operator (a network auditor, whose tokens say
  ``ascope=network``) or by any other organization (an organization auditor,
  ``ascope=organization``, who sees what concerns its member organizations).
  The first operator organization is the bootstrap one (actor None).
* Keys: rotated or revoked by the identity itself and, for every kind but a
  patient, by its registering organization or an operator. Membership never
  gives an organization power over a member's keys (issue 9: hospital B
  enrolled A's practitioner and rotated its key).
* Identities: revoked by themselves, their registering organization or an
  operator, with a reason code (never free text: it goes on the ledger).
* Memberships: granted directly by an operator, or by the organization when it
  registered the member; any other organization needs the member's signed
  acceptance (``acceptance_message``). Ended by the organization, an operator
  or the member.

The rules of challenges (nonce size, lifetime, single use) and of the PHI
fields (demographics, medical record numbers) live here too; the adapters
only generate the nonce, store, seal and hash.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from enum import Enum
from typing import Mapping, Sequence, TypeGuard, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from medledger.runtime.errors import (
    AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Unauthenticated,
)


class Kind(str, Enum):
    """Identity kinds; the values are the IdentityKind names in identity.proto
    and the ``kind`` claim of tokens."""

    PATIENT = "PATIENT"
    PRACTITIONER = "PRACTITIONER"
    ORGANIZATION = "ORGANIZATION"
    AUDITOR = "AUDITOR"
    SERVICE = "SERVICE"


class Status(str, Enum):
    ACTIVE = "ACTIVE"
    REVOKED = "REVOKED"


OPERATOR = "OPERATOR"
ORGANIZATION_TYPES = frozenset({"HOSPITAL", "CLINIC", "LABORATORY", "RESEARCH", OPERATOR})
ASSURANCE_LEVELS = frozenset({"IAL1", "IAL2", "IAL3"})
NEEDS_ASSURANCE = frozenset({Kind.PATIENT, Kind.PRACTITIONER, Kind.AUDITOR})
# An AUDITOR registered by an operator audits the whole network; one registered
# by another organization audits what concerns that organization (issue 9, item 7).
REGISTERED_BY_ORGANIZATIONS = frozenset({Kind.PATIENT, Kind.PRACTITIONER, Kind.AUDITOR})
MEMBER_KINDS = frozenset({Kind.PRACTITIONER, Kind.AUDITOR, Kind.SERVICE})
_ROLE = re.compile(r"^[a-z0-9_-]{1,64}$")
PUBLIC_KEY_BYTES = 32
# RevocationReason names in identity.proto (UNSPECIFIED is refused).
REVOCATION_REASONS = frozenset({
    "KEY_COMPROMISE", "AFFILIATION_CHANGED", "SUPERSEDED", "CESSATION_OF_OPERATION", "PRIVILEGE_WITHDRAWN",
    "REGISTRATION_ERROR", "SUBJECT_REQUEST",
})


class InconsistentEvent(ValueError):
    """An event that cannot follow the state it is applied to (e.g. a key
    rotation for an unknown identity): the event stream is damaged."""


def key_id_for(public_key: bytes) -> str:
    """A key's id: lower-case hex of the first 16 bytes of SHA-256(public key).
    Derived, so a client can compute it and a reused key is recognised."""
    return hashlib.sha256(public_key).digest()[:16].hex()


def check_public_key(raw: bytes) -> bytes:
    """The raw 32-byte Ed25519 public key, or InvalidArgument."""
    if len(raw) != PUBLIC_KEY_BYTES:
        raise InvalidArgument(f"public_key must be a raw {PUBLIC_KEY_BYTES}-byte Ed25519 key, got {len(raw)} bytes")
    if raw == bytes(PUBLIC_KEY_BYTES):
        raise InvalidArgument("public_key is all zeros")
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise InvalidArgument(f"public_key is not an Ed25519 key: {exc}") from None
    return raw


def signature_verifies(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Whether signature is a valid Ed25519 signature of message; never raises."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
        return True
    except (InvalidSignature, ValueError):
        return False


# ---- state -------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One key in an identity's history. It is in effect from valid_from until
    replaced_at (a rotation); revoked_at marks it compromised from then on."""

    key_id: str
    public_key: bytes
    valid_from: datetime
    replaced_at: datetime | None = None
    revoked_at: datetime | None = None
    previous_key_id: str = ""

    def in_effect(self, at: datetime) -> bool:
        return self.valid_from <= at and (self.replaced_at is None or at < self.replaced_at)

    def revoked_by(self, at: datetime) -> bool:
        return self.revoked_at is not None and self.revoked_at <= at

    @property
    def valid_until(self) -> datetime | None:
        ends = [t for t in (self.replaced_at, self.revoked_at) if t is not None]
        return min(ends) if ends else None


@dataclass(frozen=True)
class Acceptance:
    """A member's signature agreeing to join one organization in one role
    (see acceptance_message)."""

    key_id: str
    accepted_at: datetime
    nonce: bytes
    signature: bytes


@dataclass(frozen=True)
class Membership:
    membership_id: str
    member_id: str
    organization_id: str
    role: str
    granted_at: datetime
    ended_at: datetime | None = None
    acceptance: Acceptance | None = None

    @property
    def active(self) -> bool:
        return self.ended_at is None


@dataclass(frozen=True)
class Identity:
    identity_id: str
    kind: Kind
    assurance_level: str
    registered_by: str
    organization_type: str
    registered_at: datetime
    keys: tuple[Key, ...]
    memberships: tuple[Membership, ...] = ()
    status: Status = Status.ACTIVE
    revoked_at: datetime | None = None
    revocation_reason: str = ""

    @property
    def active(self) -> bool:
        return self.status is Status.ACTIVE

    @property
    def is_operator(self) -> bool:
        return self.kind is Kind.ORGANIZATION and self.organization_type == OPERATOR

    @property
    def current_key(self) -> Key | None:
        """The key that authenticates now: not replaced and not revoked."""
        for key in reversed(self.keys):
            if key.replaced_at is None and key.revoked_at is None:
                return key
        return None

    def key(self, key_id: str) -> Key | None:
        return next((k for k in self.keys if k.key_id == key_id), None)

    def key_at(self, at: datetime) -> Key | None:
        """The key in effect at ``at`` (revoked or not), None before registration."""
        return next((k for k in reversed(self.keys) if k.in_effect(at)), None)

    def key_for(self, key_id: str, at: datetime) -> Key | None:
        return key_for(self.keys, key_id, at)

    def membership(self, membership_id: str) -> Membership | None:
        return next((m for m in self.memberships if m.membership_id == membership_id), None)

    @property
    def active_organizations(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.organization_id for m in self.memberships if m.active))

    def revoked_by(self, at: datetime) -> bool:
        return self.revoked_at is not None and self.revoked_at <= at


def key_for(keys: Sequence[Key], key_id: str, at: datetime) -> Key | None:
    """ResolveKey's choice among an identity's keys (oldest first): the key
    named key_id whatever its period, or without one the key in effect at
    ``at`` (revoked or not)."""
    if key_id:
        return next((k for k in keys if k.key_id == key_id), None)
    return next((k for k in reversed(keys) if k.in_effect(at)), None)


def resolve_key(identity_id: str, keys: Sequence[Key], key_id: str, at: datetime) -> Key:
    """What ResolveKey answers, here and wherever identity's keys are
    projected (records): ``key_for``, or NotFound naming what is missing."""
    key = key_for(keys, key_id, at)
    if key is None:
        what = f"key {key_id}" if key_id else f"key in effect at {at.isoformat()}"
        raise NotFound(f"identity {identity_id} has no {what}")
    return key


def verify_signature_at(
    identity: Identity, message: bytes, signature: bytes, at: datetime, key_id: str = ""
) -> tuple[bool, str]:
    """(valid, key id checked): the named key, or the one in effect at ``at``,
    must have been in effect and unrevoked then, the identity unrevoked, and the
    signature must verify."""
    key = identity.key_for(key_id, at)
    if key is None:
        return False, ""
    usable = key.in_effect(at) and not key.revoked_by(at) and not identity.revoked_by(at)
    return usable and signature_verifies(key.public_key, message, signature), key.key_id


# ---- events --------------------------------------------------------------------


@dataclass(frozen=True)
class IdentityRegistered:
    identity_id: str
    kind: Kind
    key_id: str
    public_key: bytes
    assurance_level: str
    registered_by: str
    organization_type: str
    at: datetime


@dataclass(frozen=True)
class KeyRotated:
    identity_id: str
    key_id: str
    public_key: bytes
    previous_key_id: str
    at: datetime


@dataclass(frozen=True)
class KeyRevoked:
    identity_id: str
    key_id: str
    at: datetime


@dataclass(frozen=True)
class IdentityRevoked:
    identity_id: str
    reason: str  # a REVOCATION_REASONS code ('' in events from before codes)
    at: datetime


@dataclass(frozen=True)
class MembershipGranted:
    membership_id: str
    member_id: str
    organization_id: str
    role: str
    at: datetime
    acceptance: Acceptance | None = None


@dataclass(frozen=True)
class MembershipEnded:
    membership_id: str
    member_id: str
    organization_id: str
    at: datetime


Event = Union[IdentityRegistered, KeyRotated, KeyRevoked, IdentityRevoked, MembershipGranted, MembershipEnded]


def aggregate_of(event: Event) -> str:
    """The identity an event belongs to (and its Kafka key): the member for
    membership events, so one identity's history stays on one partition."""
    if isinstance(event, (MembershipGranted, MembershipEnded)):
        return event.member_id
    return event.identity_id


# ---- commands ------------------------------------------------------------------


@dataclass(frozen=True)
class Register:
    """Register ``identity_id``. actor is the caller's state; None only for the
    bootstrap organization, which the service registers itself."""

    identity_id: str
    kind: Kind
    public_key: bytes
    assurance_level: str
    organization_type: str
    actor: Identity | None
    at: datetime


@dataclass(frozen=True)
class RotateKey:
    public_key: bytes
    actor: Identity
    at: datetime


@dataclass(frozen=True)
class RevokeKey:
    key_id: str
    actor: Identity
    at: datetime


@dataclass(frozen=True)
class RevokeIdentity:
    reason: str
    actor: Identity
    at: datetime


@dataclass(frozen=True)
class GrantMembership:
    """Make the state's identity a member of ``organization`` (its loaded state,
    None if unknown), with the member's acceptance when one is needed."""

    membership_id: str
    organization: Identity | None
    organization_id: str
    role: str
    actor: Identity
    at: datetime
    acceptance: Acceptance | None = None
    acceptance_max_age: timedelta = timedelta(days=1)


@dataclass(frozen=True)
class EndMembership:
    membership_id: str
    actor: Identity
    at: datetime


Command = Union[Register, RotateKey, RevokeKey, RevokeIdentity, GrantMembership, EndMembership]


def _active_actor(actor: Identity) -> Identity:
    if not actor.active:
        raise PermissionDenied(f"identity {actor.identity_id} is revoked")
    return actor


def _existing(state: Identity | None) -> Identity:
    if state is None:
        raise NotFound("no such identity")
    return state


def _check_registration_fields(c: Register) -> None:
    if c.kind in NEEDS_ASSURANCE and c.assurance_level not in ASSURANCE_LEVELS:
        raise InvalidArgument(f"a {c.kind.value} needs assurance_level one of {sorted(ASSURANCE_LEVELS)}")
    if c.assurance_level and c.assurance_level not in ASSURANCE_LEVELS:
        raise InvalidArgument(f"assurance_level must be one of {sorted(ASSURANCE_LEVELS)}")
    if c.kind is Kind.ORGANIZATION and c.organization_type not in ORGANIZATION_TYPES:
        raise InvalidArgument(f"an ORGANIZATION needs organization_type one of {sorted(ORGANIZATION_TYPES)}")
    if c.kind is not Kind.ORGANIZATION and c.organization_type:
        raise InvalidArgument("organization_type is for ORGANIZATION identities only")


def _check_registrar(c: Register) -> str:
    """The registering identity's id ('' for the bootstrap), or PermissionDenied."""
    if c.actor is None:
        if not (c.kind is Kind.ORGANIZATION and c.organization_type == OPERATOR):
            raise PermissionDenied("only the bootstrap OPERATOR organization is registered without a caller")
        return ""
    actor = _active_actor(c.actor)
    if c.kind in REGISTERED_BY_ORGANIZATIONS:
        if actor.kind is not Kind.ORGANIZATION:
            raise PermissionDenied(f"only an organization registers a {c.kind.value}")
    elif not actor.is_operator:
        raise PermissionDenied(f"only an operator organization registers a {c.kind.value}")
    return actor.identity_id


def _register(state: Identity | None, c: Register) -> list[Event]:
    if state is not None:
        raise AlreadyExists(f"identity {c.identity_id} already exists")
    public_key = check_public_key(c.public_key)
    _check_registration_fields(c)
    registrar = _check_registrar(c)
    return [
        IdentityRegistered(
            c.identity_id, c.kind, key_id_for(public_key), public_key, c.assurance_level, registrar,
            c.organization_type, c.at,
        )
    ]


def _manages_keys(actor: Identity, target: Identity) -> bool:
    """The identity itself; for a non-patient also its registering
    organization and operators. A patient's key signs its consents, so no
    organization may replace it."""
    if actor.identity_id == target.identity_id:
        return True
    if target.kind is Kind.PATIENT:
        return False
    return actor.identity_id == target.registered_by or actor.is_operator


def _key_manager(state: Identity | None, actor: Identity) -> Identity:
    target = _existing(state)
    if not _manages_keys(_active_actor(actor), target):
        raise PermissionDenied(f"{actor.identity_id} may not manage the keys of {target.identity_id}")
    if not target.active:
        raise FailedPrecondition(f"identity {target.identity_id} is revoked")
    return target


def _rotate(state: Identity | None, c: RotateKey) -> list[Event]:
    public_key = check_public_key(c.public_key)
    target = _key_manager(state, c.actor)
    key_id = key_id_for(public_key)
    if target.key(key_id) is not None:
        raise AlreadyExists(f"key {key_id} was already used by this identity")
    previous = target.keys[-1].key_id
    return [KeyRotated(target.identity_id, key_id, public_key, previous, c.at)]


def _revoke_key(state: Identity | None, c: RevokeKey) -> list[Event]:
    target = _key_manager(state, c.actor)
    key = target.key(c.key_id)
    if key is None:
        raise NotFound(f"identity {target.identity_id} has no key {c.key_id!r}")
    if key.revoked_at is not None:
        raise FailedPrecondition(f"key {c.key_id} is already revoked")
    return [KeyRevoked(target.identity_id, key.key_id, c.at)]


def _revoke_identity(state: Identity | None, c: RevokeIdentity) -> list[Event]:
    target = _existing(state)
    actor = _active_actor(c.actor)
    if actor.identity_id not in (target.identity_id, target.registered_by) and not actor.is_operator:
        raise PermissionDenied(f"{actor.identity_id} may not revoke {target.identity_id}")
    if c.reason not in REVOCATION_REASONS:
        raise InvalidArgument(f"reason must be one of {sorted(REVOCATION_REASONS)}")
    if not target.active:
        raise FailedPrecondition(f"identity {target.identity_id} is already revoked")
    return [IdentityRevoked(target.identity_id, c.reason, c.at)]


def _grant(state: Identity | None, c: GrantMembership) -> list[Event]:
    member = _existing(state)
    actor = _active_actor(c.actor)
    if actor.identity_id != c.organization_id and not actor.is_operator:
        raise PermissionDenied(f"{actor.identity_id} may not grant memberships of {c.organization_id}")
    if not _ROLE.match(c.role):
        raise InvalidArgument("role must be 1-64 lower-case letters, digits, '-' or '_'")
    org = c.organization
    if org is None or org.kind is not Kind.ORGANIZATION:
        raise NotFound(f"no organization {c.organization_id}")
    if not org.active or not member.active:
        raise FailedPrecondition("the organization and the member must both be active")
    if member.kind not in MEMBER_KINDS:
        raise InvalidArgument(f"a {member.kind.value} cannot be a member; only {sorted(k.value for k in MEMBER_KINDS)}")
    if org.identity_id in member.active_organizations:
        raise AlreadyExists(f"{member.identity_id} is already a member of {org.identity_id}")
    if c.acceptance is not None:
        _check_acceptance(member, org.identity_id, c)
    elif not (actor.is_operator or actor.identity_id == member.registered_by):
        raise PermissionDenied(
            f"{member.identity_id} was registered by another organization: joining {org.identity_id} "
            "needs the member's signed acceptance"
        )
    return [MembershipGranted(c.membership_id, member.identity_id, org.identity_id, c.role, c.at, c.acceptance)]


ACCEPTANCE_CONTEXT = b"medledger-membership-acceptance-v1"
ACCEPTANCE_NONCE_BYTES = (16, 64)
ACCEPTANCE_FUTURE_SKEW = timedelta(seconds=300)


def acceptance_message(organization_id: str, member_id: str, role: str, accepted_at: datetime, nonce: bytes) -> bytes:
    """The bytes a member signs to accept joining ``organization_id`` as
    ``role`` (identity.proto, MembershipAcceptance). The context string keeps
    the signature from answering a challenge or signing consent terms; every
    field but the last is NUL-free and the nonce comes last, so the fields
    cannot be shifted."""
    for name, value in (("organization_id", organization_id), ("member_id", member_id), ("role", role)):
        if "\x00" in value:
            raise InvalidArgument(f"{name} must not contain NUL characters")
    seconds = str(int(accepted_at.timestamp()))
    return b"\x00".join(
        (ACCEPTANCE_CONTEXT, organization_id.encode(), member_id.encode(), role.encode(), seconds.encode(), nonce)
    )


def _check_acceptance(member: Identity, organization_id: str, c: GrantMembership) -> None:
    """The acceptance is the member's: fresh, never used, signed by its
    current key over exactly this organization, member and role."""
    a = c.acceptance
    assert a is not None
    low, high = ACCEPTANCE_NONCE_BYTES
    if not low <= len(a.nonce) <= high:
        raise InvalidArgument(f"acceptance.nonce must be {low}-{high} bytes")
    if not a.key_id:
        raise InvalidArgument("acceptance.key_id is required")
    if any(m.acceptance is not None and m.acceptance.nonce == a.nonce for m in member.memberships):
        raise PermissionDenied("this acceptance was used before; the member must sign a new one")
    if a.accepted_at < c.at - c.acceptance_max_age or a.accepted_at > c.at + ACCEPTANCE_FUTURE_SKEW:
        raise PermissionDenied("the acceptance is too old or dated in the future; the member must sign a new one")
    current = member.current_key
    if current is None or current.key_id != a.key_id:
        raise PermissionDenied("the acceptance must be signed with the member's current key")
    message = acceptance_message(organization_id, member.identity_id, c.role, a.accepted_at, a.nonce)
    if not signature_verifies(current.public_key, message, a.signature):
        raise PermissionDenied("the acceptance signature does not verify with the member's current key")


def _end(state: Identity | None, c: EndMembership) -> list[Event]:
    member = _existing(state)
    membership = member.membership(c.membership_id)
    if membership is None:
        raise NotFound(f"no membership {c.membership_id}")
    actor = _active_actor(c.actor)
    if actor.identity_id not in (membership.organization_id, member.identity_id) and not actor.is_operator:
        raise PermissionDenied(f"{actor.identity_id} may not end membership {c.membership_id}")
    if not membership.active:
        raise FailedPrecondition(f"membership {c.membership_id} has already ended")
    return [MembershipEnded(membership.membership_id, member.identity_id, membership.organization_id, c.at)]


def decide(state: Identity | None, command: Command) -> list[Event]:
    """The events ``command`` causes on ``state`` (the target identity, None if
    unknown), or a CallerError saying why not. Changes nothing."""
    if isinstance(command, Register):
        return _register(state, command)
    if isinstance(command, RotateKey):
        return _rotate(state, command)
    if isinstance(command, RevokeKey):
        return _revoke_key(state, command)
    if isinstance(command, RevokeIdentity):
        return _revoke_identity(state, command)
    if isinstance(command, GrantMembership):
        return _grant(state, command)
    return _end(state, command)


# ---- evolve ----------------------------------------------------------------------


def _require(state: Identity | None, event: Event) -> Identity:
    if state is None:
        raise InconsistentEvent(f"{type(event).__name__} for unknown identity {aggregate_of(event)}")
    return state


def _revoke_key_in(state: Identity, key_id: str, at: datetime) -> Identity:
    if state.key(key_id) is None:
        raise InconsistentEvent(f"identity {state.identity_id} has no key {key_id}")
    keys = tuple(replace(k, revoked_at=at) if k.key_id == key_id else k for k in state.keys)
    return replace(state, keys=keys)


def evolve(state: Identity | None, event: Event) -> Identity:
    """The state after ``event``. Raises InconsistentEvent if the event cannot
    follow the state; idempotency is the store's job (tracking by event_id)."""
    if isinstance(event, IdentityRegistered):
        if state is not None:
            raise InconsistentEvent(f"identity {event.identity_id} registered twice")
        key = Key(event.key_id, event.public_key, event.at)
        return Identity(
            event.identity_id, event.kind, event.assurance_level, event.registered_by, event.organization_type,
            event.at, (key,),
        )
    current = _require(state, event)
    if isinstance(event, KeyRotated):
        retired = tuple(replace(k, replaced_at=event.at) if k.replaced_at is None else k for k in current.keys)
        new = Key(event.key_id, event.public_key, event.at, previous_key_id=event.previous_key_id)
        return replace(current, keys=retired + (new,))
    if isinstance(event, KeyRevoked):
        return _revoke_key_in(current, event.key_id, event.at)
    if isinstance(event, IdentityRevoked):
        return replace(current, status=Status.REVOKED, revoked_at=event.at, revocation_reason=event.reason)
    if isinstance(event, MembershipGranted):
        m = Membership(
            event.membership_id, event.member_id, event.organization_id, event.role, event.at,
            acceptance=event.acceptance,
        )
        return replace(current, memberships=current.memberships + (m,))
    if current.membership(event.membership_id) is None:
        raise InconsistentEvent(f"identity {current.identity_id} has no membership {event.membership_id}")
    memberships = tuple(
        replace(m, ended_at=event.at) if m.membership_id == event.membership_id else m for m in current.memberships
    )
    return replace(current, memberships=memberships)


def fold(events: list[Event], state: Identity | None = None) -> Identity | None:
    for event in events:
        state = evolve(state, event)
    return state


# ---- reads and authentication ------------------------------------------------------

CHALLENGE_CONTEXT = b"medledger-identity-challenge-v1"


def challenge_message(identity_id: str, nonce: bytes) -> bytes:
    """The bytes an identity signs to answer a challenge. The context string
    and the identity id keep the signature from being usable anywhere else."""
    return CHALLENGE_CONTEXT + b"\x00" + identity_id.encode() + b"\x00" + nonce


def check_mrn_lookup(caller: Identity | None) -> Identity:
    """FindPatientByMrn's caller: a known, still active organization (a
    revoked one's token may not have expired yet)."""
    if caller is None:
        raise Unauthenticated("the token's subject is not a known identity")
    if caller.kind is not Kind.ORGANIZATION:
        raise PermissionDenied("only an organization looks up its patients by medical record number")
    return _active_actor(caller)


def may_see_demographics(viewer: Identity | None, target: Identity) -> bool:
    """PHI goes to the identity itself, the organization that registered it and
    operators; everyone else needs a consent-checked path (the records service)."""
    if viewer is None or not viewer.active:
        return False
    return viewer.identity_id in (target.identity_id, target.registered_by) or viewer.is_operator


def authentication_key(state: Identity, key_id: str = "") -> Key:
    """The key a challenge must be signed with: the current one (and the one
    named, if any). PermissionDenied for a revoked identity."""
    if not state.active:
        raise PermissionDenied(f"identity {state.identity_id} is revoked and gets no token")
    current = state.current_key
    if current is None:
        raise FailedPrecondition(f"identity {state.identity_id} has no usable key; rotate one in first")
    if key_id and key_id != current.key_id:
        raise FailedPrecondition(f"key {key_id} is not the current key of {state.identity_id}")
    return current


CHALLENGE_NONCE_BYTES = 32


@dataclass(frozen=True)
class PendingChallenge:
    """A challenge as stored until it is answered: bound to one identity and
    the key it must be signed with, usable once, until ``expires_at``."""

    identity_id: str
    key_id: str
    expires_at: datetime


def issue_challenge(state: Identity, key_id: str, now: datetime, ttl_s: int) -> PendingChallenge:
    """A challenge for ``state``'s authentication key (see authentication_key)."""
    key = authentication_key(state, key_id)
    return PendingChallenge(state.identity_id, key.key_id, now + timedelta(seconds=ttl_s))


def redeem_challenge(spent: PendingChallenge | None, identity_id: str, key_id: str, now: datetime) -> str:
    """The id of the key the answer must be signed with, or Unauthenticated.
    ``spent`` is the challenge the nonce named, already removed from storage
    (None if unknown or used): a nonce is spent by its first use whatever the
    outcome, so it can be neither replayed nor guessed at."""
    if spent is None or spent.identity_id != identity_id:
        raise Unauthenticated("unknown or already used nonce; ask for a new challenge")
    if spent.expires_at <= now:
        raise Unauthenticated("the challenge expired; ask for a new one")
    if key_id and key_id != spent.key_id:
        raise Unauthenticated("the challenge was issued for another key")
    return spent.key_id


MAX_DEMOGRAPHIC_FIELD = 256
MAX_MRN = 64


def check_demographics(fields: Mapping[str, str]) -> None:
    """The set demographics fields (name -> value): none longer than
    MAX_DEMOGRAPHIC_FIELD characters, birth_date a real YYYY-MM-DD date."""
    for name, value in fields.items():
        if len(value) > MAX_DEMOGRAPHIC_FIELD:
            raise InvalidArgument(f"demographics.{name} is longer than {MAX_DEMOGRAPHIC_FIELD} characters")
    birth_date = fields.get("birth_date", "")
    if birth_date:
        try:
            date.fromisoformat(birth_date)
        except ValueError:
            raise InvalidArgument("demographics.birth_date must be YYYY-MM-DD") from None
        if len(birth_date) != 10:
            raise InvalidArgument("demographics.birth_date must be YYYY-MM-DD")


def check_mrn(kind: Kind, registrar: Identity | None, mrn: str) -> None:
    """A medical record number is indexed for a patient registered by an
    organization, 1 to MAX_MRN characters once stripped."""
    if kind is not Kind.PATIENT or registrar is None:
        raise InvalidArgument("medical_record_number is for patients registered by an organization")
    if len(mrn.strip()) > MAX_MRN or not mrn.strip():
        raise InvalidArgument(f"medical_record_number must be 1-{MAX_MRN} characters")


def needs_audit_scope(state: Identity | None) -> TypeGuard[Identity]:
    """Whether a token for this identity carries an audit scope (auditors)."""
    return state is not None and state.kind is Kind.AUDITOR and bool(state.registered_by)


def audit_scope(state: Identity | None, registrar: Identity | None) -> str:
    """An auditor's token scope, from who registered it: "network" for an
    operator, "organization" for any other organization; "" for other kinds."""
    if not needs_audit_scope(state):
        return ""
    return "network" if registrar is not None and registrar.is_operator else "organization"
