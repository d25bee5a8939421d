"""What a hospital system asks the identity service: register its patients and
practitioners, give practitioners memberships, find a patient by the
hospital's medical record number, and look up identities and their keys.

Demographics and medical record numbers go only to the identity service
(encrypted there, MRNs kept as keyed hashes); nothing here puts them anywhere
else.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from medledger.client.session import Session
from medledger.v1 import identity_pb2, identity_pb2_grpc

AUDIENCE = ("identity",)
Demographics = identity_pb2.Demographics


@dataclass(frozen=True)
class Registered:
    """A new identity's id and the ids of the events that recorded it."""

    identity_id: str
    event_ids: tuple[str, ...]


class IdentityClient:
    """The identity service, as the session's identity."""

    def __init__(self, session: Session, stub: identity_pb2_grpc.IdentityServiceStub) -> None:
        self._session = session
        self._stub = stub

    def _register(self, request: identity_pb2.RegisterIdentityRequest) -> Registered:
        reply = self._session.call("identity RegisterIdentity", AUDIENCE, self._stub.RegisterIdentity, request)
        return Registered(reply.identity.identity_id, tuple(reply.event_ids))

    def register_patient(
        self,
        public_key: bytes,
        *,
        demographics: identity_pb2.Demographics | None = None,
        medical_record_number: str = "",
        assurance_level: str = "IAL2",
    ) -> Registered:
        """Register a patient holding the private half of public_key (raw 32
        bytes; the patient's own device keeps the private key). The caller must
        be an ORGANIZATION; it becomes the patient's registering organization."""
        request = identity_pb2.RegisterIdentityRequest(
            kind=identity_pb2.PATIENT, public_key=public_key, assurance_level=assurance_level,
            medical_record_number=medical_record_number, demographics=demographics,
        )
        return self._register(request)

    def register_practitioner(self, public_key: bytes, *, assurance_level: str = "IAL2") -> Registered:
        """Register a practitioner (ORGANIZATION callers); give it a membership
        with ``grant_membership`` before it acts for the organization."""
        request = identity_pb2.RegisterIdentityRequest(
            kind=identity_pb2.PRACTITIONER, public_key=public_key, assurance_level=assurance_level
        )
        return self._register(request)

    def grant_membership(self, member_id: str, organization_id: str, role: str = "physician") -> str:
        """Make member_id a member of organization_id; the membership id."""
        request = identity_pb2.GrantMembershipRequest(member_id=member_id, organization_id=organization_id, role=role)
        reply = self._session.call("identity GrantMembership", AUDIENCE, self._stub.GrantMembership, request)
        return str(reply.membership.membership_id)

    def find_patient_by_mrn(self, medical_record_number: str) -> identity_pb2.Identity:
        """The patient this organization registered under the number (NotFound otherwise)."""
        request = identity_pb2.FindPatientByMrnRequest(medical_record_number=medical_record_number)
        return self._session.call("identity FindPatientByMrn", AUDIENCE, self._stub.FindPatientByMrn, request)

    def get(self, identity_id: str) -> identity_pb2.Identity:
        """An identity's public record (demographics only where the caller may see them)."""
        request = identity_pb2.GetIdentityRequest(identity_id=identity_id)
        return self._session.call("identity GetIdentity", AUDIENCE, self._stub.GetIdentity, request)

    def resolve_key(self, identity_id: str, *, key_id: str = "", at: datetime | None = None) -> identity_pb2.ResolvedKey:
        """The key identity_id used at ``at`` (default now), or the named key,
        with its validity window; check ``revoked`` before trusting it."""
        request = identity_pb2.ResolveKeyRequest(identity_id=identity_id, key_id=key_id)
        if at is not None:
            request.at_time.FromDatetime(at)
        return self._session.call("identity ResolveKey", AUDIENCE, self._stub.ResolveKey, request)
