"""Test helpers for anything that needs identities and tokens from a real,
spawned identity service (identity's own tests, consent, records, ledger).

Use the ``identity_service`` fixture (import it into a conftest or a test
module: ``from medledger.testing.identity import identity_service``). It starts
``medledger serve identity`` with a bootstrap OPERATOR organization whose key
the test holds, waits until SERVING and returns an ``IdentityHarness``:

    org = identity_service.organization()                 # a HOSPITAL, with a token
    patient = identity_service.patient(org)               # registered by org, with a token
    doc = identity_service.practitioner(org, "physician") # member of org; token lists org
    auditor = identity_service.auditor()
    svc = identity_service.service()                      # SERVICE identity (token via Challenge/IssueToken)
    stub.Method(request, metadata=patient.metadata)

A party's ``token`` is for every service (``TEST_AUDIENCE``), so one token
works against whichever service a test calls: a convenience of this harness
only. Production clients name the services they need (IssueToken's
audience, ``ServiceCredentials(audience=...)``, ``medledger identity token
--audience``); tests of the audience rule use ``harness.token_for``.

Calls are synchronous (grpc, not grpc.aio) so sync and async tests can use
them alike; the service is another process, so blocking is harmless.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medledger.identity import keyfiles
from medledger.identity.cli import login
from medledger.identity.domain import acceptance_message, key_id_for
from medledger.runtime.auth import AUDIENCES
from medledger.identity.settings import bootstrap_identity_id
from medledger.v1 import identity_pb2, identity_pb2_grpc
from medledger.testing.stack import ServiceProcess

Kind = identity_pb2.IdentityKind
TEST_AUDIENCE = AUDIENCES  # harness tokens are for every service; see the module docstring


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return keyfiles.raw_public_key(key)


@dataclass
class Party:
    """An identity the test controls: its id, kind, private key and latest token."""

    identity_id: str
    kind: str
    private_key: Ed25519PrivateKey
    token: str = ""
    event_ids: list[str] = field(default_factory=list)

    @property
    def public_key(self) -> bytes:
        return raw_public(self.private_key)

    @property
    def key_id(self) -> str:
        return key_id_for(self.public_key)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC call metadata carrying the bearer token."""
        return (("authorization", f"Bearer {self.token}"),)

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    def write_key(self, path: Path) -> Path:
        """Write the private key as PEM (mode 0600), e.g. for a service process's
        key-file setting; ServiceCredentials.from_file reads it back."""
        keyfiles.write_secret(path, keyfiles.private_key_pem(self.private_key))
        return path


def obtain_token(
    stub: identity_pb2_grpc.IdentityServiceStub, identity_id: str, key: Ed25519PrivateKey,
    audience: Sequence[str] = TEST_AUDIENCE,
) -> str:
    """Challenge → sign the challenge message → IssueToken for audience."""
    return str(login(stub, identity_id, key, audience).token)


def acceptance(
    member: Party, organization_id: str, role: str, accepted_at: datetime | None = None, nonce: bytes | None = None
) -> identity_pb2.MembershipAcceptance:
    """member's signed acceptance of joining organization_id as role
    (identity.proto, MembershipAcceptance), with its current key."""
    when = (accepted_at or datetime.now(timezone.utc)).replace(microsecond=0)
    nonce = nonce if nonce is not None else secrets.token_bytes(16)
    signature = member.sign(acceptance_message(organization_id, member.identity_id, role, when, nonce))
    msg = identity_pb2.MembershipAcceptance(key_id=member.key_id, nonce=nonce, signature=signature)
    msg.accepted_at.FromDatetime(when)
    return msg


class IdentityHarness:
    """A running identity service and the bootstrap operator organization."""

    def __init__(
        self,
        address: str,
        operator_key: Ed25519PrivateKey,
        process: ServiceProcess | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.address = address
        self.process = process
        self.env = env or {}  # the identity settings it was started with (key files)
        self.channel = grpc.insecure_channel(address)
        self.stub = identity_pb2_grpc.IdentityServiceStub(self.channel)
        self.operator = Party(bootstrap_identity_id(raw_public(operator_key)), "ORGANIZATION", operator_key)
        self.login(self.operator)

    def close(self) -> None:
        self.channel.close()

    def login(self, party: Party) -> Party:
        """Give party a fresh token for every service (e.g. after a membership change)."""
        party.token = obtain_token(self.stub, party.identity_id, party.private_key)
        return party

    def token_for(self, party: Party, *audience: str) -> tuple[tuple[str, str], ...]:
        """Call metadata with a new token for exactly these services."""
        return (("authorization", f"Bearer {obtain_token(self.stub, party.identity_id, party.private_key, audience)}"),)

    def register(
        self,
        kind: str,
        by: Party,
        assurance_level: str = "",
        organization_type: str = "",
        demographics: identity_pb2.Demographics | None = None,
        medical_record_number: str = "",
        key: Ed25519PrivateKey | None = None,
        login: bool = True,
    ) -> Party:
        key = key or generate_key()
        request = identity_pb2.RegisterIdentityRequest(
            kind=Kind.Value(kind), public_key=raw_public(key), assurance_level=assurance_level,
            organization_type=organization_type, medical_record_number=medical_record_number,
        )
        if demographics is not None:
            request.demographics.CopyFrom(demographics)
        reply = self.stub.RegisterIdentity(request, metadata=by.metadata, timeout=15)
        party = Party(reply.identity.identity_id, kind, key, event_ids=list(reply.event_ids))
        return self.login(party) if login else party

    def organization(self, organization_type: str = "HOSPITAL") -> Party:
        return self.register("ORGANIZATION", self.operator, organization_type=organization_type)

    def patient(
        self, organization: Party, demographics: identity_pb2.Demographics | None = None, medical_record_number: str = ""
    ) -> Party:
        return self.register("PATIENT", organization, "IAL2", demographics=demographics,
                             medical_record_number=medical_record_number)

    def grant_membership(
        self, organization: Party, member: Party, role: str, by: Party | None = None, accepted: bool = False
    ) -> str:
        """Grant directly (by the member's registering organization or an
        operator) or, with ``accepted``, on the member's signed acceptance."""
        request = identity_pb2.GrantMembershipRequest(
            member_id=member.identity_id, organization_id=organization.identity_id, role=role
        )
        if accepted:
            request.acceptance.CopyFrom(acceptance(member, organization.identity_id, role))
        reply = self.stub.GrantMembership(request, metadata=(by or organization).metadata, timeout=15)
        member.event_ids += list(reply.event_ids)
        return str(reply.membership.membership_id)

    def practitioner(self, organization: Party, role: str = "physician") -> Party:
        """A practitioner registered by and member of organization; its token lists it."""
        doc = self.register("PRACTITIONER", organization, "IAL2", login=False)
        self.grant_membership(organization, doc, role)
        return self.login(doc)

    def auditor(self, organization: Party | None = None, role: str = "auditor") -> Party:
        """An auditor registered by the operator, member of organization if given."""
        auditor = self.register("AUDITOR", self.operator, "IAL2", login=False)
        if organization is not None:
            self.grant_membership(organization, auditor, role, by=self.operator)
        return self.login(auditor)

    def organization_auditor(self, organization: Party, role: str = "auditor") -> Party:
        """An auditor registered by (and member of) organization: it audits only
        what concerns that organization (its token's ascope is "organization")."""
        auditor = self.register("AUDITOR", organization, "IAL2", login=False)
        self.grant_membership(organization, auditor, role)
        return self.login(auditor)

    def service(self, organization: Party | None = None, role: str = "service") -> Party:
        """A SERVICE identity registered by the operator (e.g. for consent or records)."""
        svc = self.register("SERVICE", self.operator, login=False)
        if organization is not None:
            self.grant_membership(organization, svc, role, by=self.operator)
        return self.login(svc)


def identity_env(directory: Path, operator_key: Ed25519PrivateKey) -> dict[str, str]:
    """Environment overrides for an identity process: its keys in directory and
    the bootstrap organization's public key."""
    pub = directory / "bootstrap-operator.pub"
    pub.write_text(keyfiles.public_key_text(raw_public(operator_key)) + "\n")
    return {
        "MEDLEDGER_IDENTITY_TOKEN_KEY_FILE": str(_ensure(directory / "identity-token.key", keyfiles.private_key_pem(generate_key()))),
        "MEDLEDGER_IDENTITY_DATA_KEY_FILE": str(_ensure(directory / "identity-data.key", keyfiles.new_data_key())),
        "MEDLEDGER_IDENTITY_BOOTSTRAP_PUBLIC_KEY_FILE": str(pub),
    }


def _ensure(path: Path, content: bytes) -> Path:
    if not path.exists():
        keyfiles.write_secret(path, content)
    return path
