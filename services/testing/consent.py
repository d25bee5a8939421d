"""Builders for consent tests and the consent benchmark: terms, signed grants
and the events the consent projection reads, without any service running."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import Message

from medledger.consent.domain import timestamp as ts
from medledger.identity import keyfiles
from medledger.runtime.consumer import PositionedConsumer
from medledger.consent.signing import sign_terms
from medledger.runtime.envelope import envelope
from medledger.v1 import consent_pb2 as pb
from medledger.v1 import events_pb2
from medledger.v1 import identity_pb2 as ipb
from medledger.testing.stack import BOOTSTRAP

if TYPE_CHECKING:
    from medledger.testing.identity import IdentityHarness

M = TypeVar("M", bound=Message)

def terms(
    patient_id: str,
    grantee_id: str,
    *,
    signer_id: str | None = None,
    signer_key_id: str = "key-1",
    purposes: Iterable[pb.Purpose.ValueType] = (pb.PURPOSE_TREATMENT,),
    categories: Iterable[str] = (),
    record_ids: Iterable[str] = (),
    valid_from: datetime | None = None,
    valid_until: datetime | None = None,
    signed_at: datetime | None = None,
    consent_id: str | None = None,
) -> pb.ConsentTerms:
    """Terms with sensible defaults: treatment, all records, valid for a day
    from now (or from valid_from)."""
    now = datetime.now(timezone.utc)
    start = valid_from or now - timedelta(minutes=1)
    scope = pb.ConsentScope(categories=list(categories), record_ids=list(record_ids))
    scope.all_records = not (scope.categories or scope.record_ids)
    return pb.ConsentTerms(
        consent_id=consent_id or str(uuid.uuid4()),
        patient_id=patient_id,
        grantee_id=grantee_id,
        purposes=list(purposes),
        scope=scope,
        valid_from=ts(start),
        valid_until=ts(valid_until or start + timedelta(days=1)),
        signer_id=signer_id or patient_id,
        signer_key_id=signer_key_id,
        signed_at=ts(signed_at or now),
    )


def grant_request(key: Ed25519PrivateKey, t: pb.ConsentTerms) -> pb.GrantConsentRequest:
    encoded, signature = sign_terms(key, t)
    return pb.GrantConsentRequest(terms=encoded, signature=signature)


def event(payload: Message, aggregate_id: str, at: datetime | None = None, actor: str = "") -> events_pb2.EventEnvelope:
    return envelope(payload, aggregate_id=aggregate_id, producer="test", actor=actor, occurred_at=at)


def granted(
    t: pb.ConsentTerms,
    signature: bytes = b"\x01" * 64,
    grantee_kind: pb.GranteeKind.ValueType = pb.GRANTEE_KIND_PRACTITIONER,
    at: datetime | None = None,
) -> events_pb2.EventEnvelope:
    role = pb.SIGNER_ROLE_PATIENT if t.signer_id == t.patient_id else pb.SIGNER_ROLE_REPRESENTATIVE
    payload = pb.ConsentGranted(terms=t, signature=signature, grantee_kind=grantee_kind, signer_role=role)
    return event(payload, t.patient_id, at, actor=t.signer_id)


def revoked(t: pb.ConsentTerms, at: datetime | None = None) -> events_pb2.EventEnvelope:
    payload = pb.ConsentRevoked(consent_id=t.consent_id, patient_id=t.patient_id, revoked_by=t.patient_id)
    return event(payload, t.patient_id, at)


def registered(identity_id: str, kind: str, registered_by: str = "") -> events_pb2.EventEnvelope:
    payload = ipb.IdentityRegistered(identity_id=identity_id, kind=ipb.IdentityKind.Value(kind), registered_by=registered_by)
    return event(payload, identity_id)


def membership(member_id: str, organization_id: str, membership_id: str, ended: bool = False) -> events_pb2.EventEnvelope:
    if ended:
        return event(ipb.MembershipEnded(membership_id=membership_id, member_id=member_id, organization_id=organization_id), member_id)
    return event(
        ipb.MembershipGranted(membership_id=membership_id, member_id=member_id, organization_id=organization_id, role="physician"),
        member_id,
    )


# ---- against running services ---------------------------------------------------


def consent_env(identity: "IdentityHarness", directory: Path, **extra: str) -> dict[str, str]:
    """Environment overrides for a consent process: a SERVICE identity registered
    with the identity service, its key in directory, quick expiry sweeps."""
    svc = identity.service()
    key_file = directory / f"consent-{svc.identity_id}.key"
    if not key_file.exists():
        keyfiles.write_secret(key_file, keyfiles.private_key_pem(svc.private_key))
    return {
        "MEDLEDGER_CONSENT_IDENTITY_ID": svc.identity_id,
        "MEDLEDGER_CONSENT_KEY_FILE": str(key_file),
        "MEDLEDGER_CONSENT_EXPIRY_INTERVAL_S": "0.2",
        **extra,
    }


async def read_topic(topic: str) -> list[events_pb2.EventEnvelope]:
    """Every envelope on topic now, all partitions."""
    async with PositionedConsumer(BOOTSTRAP, [topic]) as consumer:
        await consumer.start()
        ends = await consumer.end_offsets()
        out: list[events_pb2.EventEnvelope] = []
        while await consumer.behind(ends):
            out += [events_pb2.EventEnvelope.FromString(d.value or b"") for d in await consumer.fetch(timeout_ms=1000)]
        return out


def payloads(events: Iterable[events_pb2.EventEnvelope], cls: type[M]) -> list[M]:
    """The payloads of one type among envelopes."""
    found = []
    for env in events:
        if env.payload.TypeName() == cls.DESCRIPTOR.full_name:
            found.append(cls.FromString(env.payload.value))
    return found


async def events_when(
    topic: str, ready: Callable[[list[events_pb2.EventEnvelope]], bool], timeout: float = 10.0
) -> list[events_pb2.EventEnvelope]:
    """The topic's envelopes once ready(envelopes) holds; AssertionError after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        found = await read_topic(topic)
        if ready(found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for events on {topic}")
        await asyncio.sleep(0.2)
