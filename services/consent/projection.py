"""The decision projection: every patient's consent state and the identity
facts decisions need (kinds, revocations, memberships), folded from
consent.events and identity.events, plus the ledger index of each grant.
Pure and in memory: one per replica, every replica holds every consent.

Events whose type it does not know are ignored (other producers may add
events); a payload that does not parse is reported to the caller, which logs
and skips it. It trusts what is on consent.events: only the consent service
may write that topic (Kafka ACLs in production, see k8s/).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Iterator

from google.protobuf.message import DecodeError, Message

from medledger.consent.domain import (
    BreakGlassRecord, ConsentRecord, IdentityFacts, PatientState, Recorded, RepresentationRecord, aggregate_id, evolve,
    representation_id,
)
from medledger.runtime.enums import enum_name
from medledger.v1 import consent_pb2 as cpb
from medledger.v1 import events_pb2
from medledger.v1 import identity_pb2 as ipb

CONSENT_EVENTS: dict[str, type[Message]] = {
    cls.DESCRIPTOR.full_name: cls
    for cls in (
        cpb.ConsentGranted, cpb.ConsentRevoked, cpb.ConsentExpired, cpb.BreakGlassInvoked, cpb.BreakGlassReviewed,
        cpb.RepresentativeRegistered, cpb.RepresentationEnded, cpb.RepresentationReviewed,
    )
}
IDENTITY_EVENTS: dict[str, type[Message]] = {
    cls.DESCRIPTOR.full_name: cls
    for cls in (ipb.IdentityRegistered, ipb.IdentityRevoked, ipb.MembershipGranted, ipb.MembershipEnded)
}


class MalformedEvent(ValueError):
    """A record that is not an envelope, or whose payload does not parse."""


def unpack(envelope: events_pb2.EventEnvelope, known: dict[str, type[Message]]) -> Message | None:
    cls = known.get(envelope.payload.TypeName())
    if cls is None:
        return None
    try:
        return cls.FromString(envelope.payload.value)
    except DecodeError as exc:
        raise MalformedEvent(f"event {envelope.event_id}: {envelope.event_type} payload does not parse") from exc


def recorded(envelope: events_pb2.EventEnvelope, payload: Message) -> Recorded:
    return Recorded(
        envelope.event_id, envelope.occurred_at.ToDatetime(tzinfo=timezone.utc), envelope.actor, payload
    )


@dataclass(slots=True)
class _Identity:
    # identity.events are keyed per identity, but a membership event may be
    # read before the member's registration (another partition): entries are
    # created by whichever event comes first.
    kind: str = "UNKNOWN"
    active: bool = True
    registered_by: str = ""
    # membership id -> organization id
    memberships: dict[str, str] = field(default_factory=dict)
    former: set[str] = field(default_factory=set)


class Projection:
    """Implements decisions.AccessView."""

    def __init__(self) -> None:
        self._patients: dict[str, PatientState] = {}
        self._consent_patient: dict[str, str] = {}
        self._identities: dict[str, _Identity] = {}
        self._facts: dict[str, IdentityFacts] = {}
        # organization id -> {membership id: member id}, active memberships only
        self._org_members: dict[str, dict[str, str]] = {}
        self._ended: set[str] = set()
        # consent.events event id -> ledger index, once the ledger sequenced it
        # (kept for every consent event: on replay ledger.entries may be read
        # before the event it indexes)
        self._ledger_index: dict[str, int] = {}
        self._expiries: list[tuple[datetime, str]] = []
        # break-glass id / representation id -> patient id
        self._break_glass_patient: dict[str, str] = {}
        self._representation_patient: dict[str, str] = {}
        # what waits for review, oldest first: id -> patient id
        self._pending_break_glass: dict[str, str] = {}
        self._pending_representations: dict[str, str] = {}
        self.events_applied = 0

    # ---- reads (decisions.AccessView) ----

    def patient(self, patient_id: str) -> PatientState | None:
        return self._patients.get(patient_id)

    def identity(self, identity_id: str) -> IdentityFacts | None:
        facts = self._facts.get(identity_id)
        if facts is None:
            found = self._identities.get(identity_id)
            if found is None or found.kind == "UNKNOWN":
                return None
            facts = self._facts[identity_id] = IdentityFacts(
                identity_id, found.kind, found.active, frozenset(found.memberships.values()),
                frozenset(found.former), found.registered_by,
            )
        return facts

    def members(self, organization_id: str) -> Iterable[str]:
        return set(self._org_members.get(organization_id, {}).values())

    def consent(self, consent_id: str) -> ConsentRecord | None:
        patient = self._consent_patient.get(consent_id)
        return None if patient is None else self._patients[patient].consents.get(consent_id)

    def ledger_index(self, event_id: str) -> int | None:
        return self._ledger_index.get(event_id)

    def break_glass(self, break_glass_id: str) -> BreakGlassRecord | None:
        patient = self._break_glass_patient.get(break_glass_id)
        return None if patient is None else self._patients[patient].break_glass.get(break_glass_id)

    def representation(self, rid: str) -> RepresentationRecord | None:
        patient = self._representation_patient.get(rid)
        return None if patient is None else self._patients[patient].representations.get(rid)

    def pending_break_glass(self) -> Iterator[BreakGlassRecord]:
        """Break-glass accesses awaiting review, oldest first."""
        for bg_id, patient in self._pending_break_glass.items():
            yield self._patients[patient].break_glass[bg_id]

    def pending_representations(self) -> Iterator[RepresentationRecord]:
        """Organizations' appointments awaiting review, oldest first."""
        for rid, patient in self._pending_representations.items():
            yield self._patients[patient].representations[rid]

    @property
    def consent_count(self) -> int:
        return len(self._consent_patient)

    # ---- applying events ----

    def apply(self, envelope: events_pb2.EventEnvelope) -> bool:
        """Fold one envelope from consent.events or identity.events; False if
        its type is not one the projection uses."""
        payload = unpack(envelope, CONSENT_EVENTS)
        if payload is not None:
            self._apply_consent(recorded(envelope, payload))
            return True
        payload = unpack(envelope, IDENTITY_EVENTS)
        if payload is not None:
            self._apply_identity(payload)
            return True
        return False

    def _apply_consent(self, event: Recorded) -> None:
        patient_id = aggregate_id(event.payload)
        before = self._patients.get(patient_id) or PatientState(patient_id)
        after = evolve(before, event)
        if after is before:
            return
        self._patients[patient_id] = after
        self.events_applied += 1
        payload = event.payload
        if isinstance(payload, cpb.ConsentGranted):
            consent = after.consents[payload.terms.consent_id]
            self._consent_patient[consent.consent_id] = patient_id
            heapq.heappush(self._expiries, (consent.valid_until, consent.consent_id))
        elif isinstance(payload, cpb.BreakGlassInvoked):
            self._break_glass_patient[payload.break_glass_id] = patient_id
            self._pending_break_glass[payload.break_glass_id] = patient_id
        elif isinstance(payload, cpb.BreakGlassReviewed):
            self._pending_break_glass.pop(payload.break_glass_id, None)
        elif isinstance(payload, cpb.RepresentativeRegistered):
            rid = representation_id(payload, event)
            self._representation_patient[rid] = patient_id
            if after.representations[rid].review.pending:
                self._pending_representations[rid] = patient_id
        elif isinstance(payload, cpb.RepresentationReviewed):
            self._pending_representations.pop(payload.representation_id, None)

    def _apply_identity(self, event: Message) -> None:
        if isinstance(event, ipb.IdentityRegistered):
            changed = event.identity_id
            entry = self._identities.setdefault(changed, _Identity())
            entry.kind = enum_name(ipb.IdentityKind, event.kind, "UNKNOWN")
            entry.registered_by = event.registered_by
        elif isinstance(event, ipb.IdentityRevoked):
            changed = event.identity_id
            self._identities.setdefault(changed, _Identity()).active = False
        elif isinstance(event, ipb.MembershipGranted):
            changed = event.member_id
            member = self._identities.setdefault(changed, _Identity())
            if event.membership_id not in self._ended:
                member.memberships[event.membership_id] = event.organization_id
                self._org_members.setdefault(event.organization_id, {})[event.membership_id] = changed
        elif isinstance(event, ipb.MembershipEnded):
            changed = event.member_id
            member = self._identities.setdefault(changed, _Identity())
            self._ended.add(event.membership_id)
            member.memberships.pop(event.membership_id, None)
            member.former.add(event.organization_id)
            self._org_members.get(event.organization_id, {}).pop(event.membership_id, None)
        else:
            return
        self._facts.pop(changed, None)
        self.events_applied += 1

    def apply_ledger_entry(self, event_id: str, index: int) -> None:
        """Remember where the ledger sequenced a consent.events event."""
        self._ledger_index[event_id] = index

    # ---- expiry ----

    def due_expiries(self, now: datetime) -> list[ConsentRecord]:
        """Consents whose window ended and whose expiry is not recorded yet;
        each is returned once (hand failures back with ``expiry_failed``)."""
        due = []
        while self._expiries and self._expiries[0][0] <= now:
            _, consent_id = heapq.heappop(self._expiries)
            consent = self.consent(consent_id)
            if consent is not None and consent.revoked_at is None and not consent.expiry_recorded:
                due.append(consent)
        return due

    def expiry_failed(self, consent: ConsentRecord) -> None:
        heapq.heappush(self._expiries, (consent.valid_until, consent.consent_id))

