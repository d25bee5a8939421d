"""IdentityService through gRPC against a spawned process, the real broker and
database: registration, bad input, authentication, authorization, keys over time."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import asyncpg
import grpc
import pytest

from medledger.identity.domain import key_id_for
from medledger.runtime.auth import Caller, mint_token
from medledger.runtime.errors import NotFound
from medledger.runtime.identity_client import IdentityClient, ServiceCredentials, load_private_key, make_verifier
from medledger.v1 import identity_pb2
from medledger.runtime.settings import Topics
from medledger.testing.consent import read_topic
from medledger.testing.identity import IdentityHarness, Party, acceptance, generate_key, identity_env, raw_public
from medledger.testing.stack import ServiceProcess

pytestmark = pytest.mark.timeout(180)

ALICE = identity_pb2.Demographics(given_name="Alice", family_name="Zephyrine", birth_date="1971-02-03", phone="+15550100")


def status_of(call: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def register_request(kind: identity_pb2.IdentityKind.ValueType, public_key: bytes, **fields: Any) -> identity_pb2.RegisterIdentityRequest:
    return identity_pb2.RegisterIdentityRequest(kind=kind, public_key=public_key, **fields)


# ---- registration ----------------------------------------------------------------


def test_an_organization_registers_a_patient_whose_demographics_only_the_right_callers_see(
    identity_service: IdentityHarness,
) -> None:
    ids = identity_service
    org = ids.organization()
    patient = ids.patient(org, demographics=ALICE, medical_record_number="MRN-0042")
    stub = ids.stub
    request = identity_pb2.GetIdentityRequest(identity_id=patient.identity_id)
    for viewer in (patient, org, ids.operator):
        seen = stub.GetIdentity(request, metadata=viewer.metadata)
        assert seen.demographics == ALICE, viewer.kind
    seen = stub.GetIdentity(request, metadata=ids.organization("CLINIC").metadata)
    assert not seen.HasField("demographics")
    assert seen.kind == identity_pb2.PATIENT and seen.status == identity_pb2.ACTIVE
    assert seen.registered_by == org.identity_id and seen.assurance_level == "IAL2"
    assert seen.current_key_id == patient.key_id == key_id_for(patient.public_key)
    found = stub.FindPatientByMrn(identity_pb2.FindPatientByMrnRequest(medical_record_number="MRN-0042"), metadata=org.metadata)
    assert found.identity_id == patient.identity_id
    other_org = ids.organization("CLINIC")
    assert status_of(lambda: stub.FindPatientByMrn(
        identity_pb2.FindPatientByMrnRequest(medical_record_number="MRN-0042"), metadata=other_org.metadata
    )) == grpc.StatusCode.NOT_FOUND
    # a revoked organization no longer finds its patients, though its token has not expired
    stub.RevokeIdentity(identity_pb2.RevokeIdentityRequest(identity_id=org.identity_id, reason=identity_pb2.CESSATION_OF_OPERATION),
                        metadata=ids.operator.metadata)
    assert status_of(lambda: stub.FindPatientByMrn(
        identity_pb2.FindPatientByMrnRequest(medical_record_number="MRN-0042"), metadata=org.metadata
    )) == grpc.StatusCode.PERMISSION_DENIED


def test_duplicates_already_exist_and_change_nothing(identity_service: IdentityHarness) -> None:
    ids = identity_service
    org = ids.organization()
    patient = ids.patient(org, medical_record_number="MRN-1")
    stub = ids.stub
    same_key = register_request(identity_pb2.PATIENT, patient.public_key, assurance_level="IAL2")
    assert status_of(lambda: stub.RegisterIdentity(same_key, metadata=org.metadata)) == grpc.StatusCode.ALREADY_EXISTS
    fresh = generate_key()
    same_mrn = register_request(identity_pb2.PATIENT, raw_public(fresh), assurance_level="IAL2", medical_record_number="MRN-1")
    assert status_of(lambda: stub.RegisterIdentity(same_mrn, metadata=org.metadata)) == grpc.StatusCode.ALREADY_EXISTS
    # the refused registration left nothing behind: its key is still free
    ok = register_request(identity_pb2.PATIENT, raw_public(fresh), assurance_level="IAL2", medical_record_number="MRN-2")
    assert stub.RegisterIdentity(ok, metadata=org.metadata).identity.identity_id


@pytest.mark.parametrize(
    "request_fields",
    [
        dict(kind=identity_pb2.PATIENT, public_key=b"\x01" * 31),
        dict(kind=identity_pb2.PATIENT, public_key=b""),
        dict(kind=identity_pb2.IDENTITY_KIND_UNSPECIFIED, public_key=b"\x07" * 32),
        dict(kind=42, public_key=b"\x07" * 32),
        dict(kind=identity_pb2.PATIENT, public_key=None, assurance_level="IAL7"),
        dict(kind=identity_pb2.PATIENT, public_key=None, demographics=identity_pb2.Demographics(birth_date="03/02/1971")),
    ],
    ids=["short-key", "no-key", "unspecified-kind", "unknown-kind", "bad-assurance", "bad-birth-date"],
)
def test_malformed_registrations_are_invalid(identity_service: IdentityHarness, request_fields: dict[str, Any]) -> None:
    org = identity_service.organization()
    fields = dict(request_fields)
    if fields["public_key"] is None:
        fields["public_key"] = raw_public(generate_key())
    fields.setdefault("assurance_level", "IAL2")
    request = identity_pb2.RegisterIdentityRequest(**fields)
    code = status_of(lambda: identity_service.stub.RegisterIdentity(request, metadata=org.metadata))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


# ---- authentication --------------------------------------------------------------


async def test_challenge_and_token_give_a_token_every_service_verifies(identity_service: IdentityHarness) -> None:
    ids = identity_service
    org = ids.organization()
    doc = ids.practitioner(org, "physician")
    caller = await make_verifier(ids.address).verify(doc.token, "consent")
    assert (caller.subject, caller.kind, caller.organizations) == (doc.identity_id, "PRACTITIONER", (org.identity_id,))
    assert caller.key_id == doc.key_id and caller.issued_at > 0
    keys = ids.stub.GetTokenVerificationKey(identity_pb2.GetTokenVerificationKeyRequest())
    assert [k.algorithm for k in keys.keys] == ["EdDSA"] and len(keys.keys[0].public_key) == 32


def test_a_signature_over_another_nonce_is_unauthenticated(identity_service: IdentityHarness) -> None:
    ids = identity_service
    patient = ids.patient(ids.organization())
    stub = ids.stub
    first = stub.Challenge(identity_pb2.ChallengeRequest(identity_id=patient.identity_id))
    second = stub.Challenge(identity_pb2.ChallengeRequest(identity_id=patient.identity_id))
    wrong = identity_pb2.IssueTokenRequest(
        identity_id=patient.identity_id, nonce=second.nonce, signature=patient.sign(first.message), audience=["identity"]
    )
    assert status_of(lambda: stub.IssueToken(wrong)) == grpc.StatusCode.UNAUTHENTICATED
    # the failed attempt spent the second nonce; the first is still good once
    good = identity_pb2.IssueTokenRequest(
        identity_id=patient.identity_id, nonce=first.nonce, signature=patient.sign(first.message), audience=["identity"]
    )
    assert stub.IssueToken(good).token
    assert status_of(lambda: stub.IssueToken(good)) == grpc.StatusCode.UNAUTHENTICATED  # replayed
    right_sig_for_spent = identity_pb2.IssueTokenRequest(
        identity_id=patient.identity_id, nonce=second.nonce, signature=patient.sign(second.message), audience=["identity"]
    )
    assert status_of(lambda: stub.IssueToken(right_sig_for_spent)) == grpc.StatusCode.UNAUTHENTICATED


def test_another_identitys_key_cannot_answer_a_challenge(identity_service: IdentityHarness) -> None:
    ids = identity_service
    org = ids.organization()
    victim, attacker = ids.patient(org), ids.patient(org)
    challenge = ids.stub.Challenge(identity_pb2.ChallengeRequest(identity_id=victim.identity_id))
    forged = identity_pb2.IssueTokenRequest(
        identity_id=victim.identity_id, nonce=challenge.nonce, signature=attacker.sign(challenge.message),
        audience=["identity"],
    )
    assert status_of(lambda: ids.stub.IssueToken(forged)) == grpc.StatusCode.UNAUTHENTICATED


def test_missing_expired_and_forged_tokens_are_unauthenticated(identity_service: IdentityHarness) -> None:
    ids = identity_service
    org = ids.organization()
    stub = ids.stub
    request = identity_pb2.GetIdentityRequest(identity_id=org.identity_id)
    assert status_of(lambda: stub.GetIdentity(request)) == grpc.StatusCode.UNAUTHENTICATED
    real_key = load_private_key(Path(ids.env["MEDLEDGER_IDENTITY_TOKEN_KEY_FILE"]))
    kid = key_id_for(raw_public(real_key))
    who = Caller(org.identity_id, "ORGANIZATION", audience=("identity",), key_id=org.key_id)
    expired = mint_token(real_key, kid, who, 60, now=time.time() - 3600)
    forged = mint_token(generate_key(), kid, who, 60)
    for_the_ledger = mint_token(real_key, kid, Caller(org.identity_id, "ORGANIZATION", audience=("ledger",)), 60)
    no_audience = mint_token(real_key, kid, Caller(org.identity_id, "ORGANIZATION"), 60)
    for token in (expired, forged, "not-a-jwt", for_the_ledger, no_audience):
        bad = (("authorization", f"Bearer {token}"),)
        assert status_of(lambda: stub.GetIdentity(request, metadata=bad)) == grpc.StatusCode.UNAUTHENTICATED
    assert stub.GetIdentity(request, metadata=(("authorization", f"Bearer {mint_token(real_key, kid, who, 60)}"),))


def test_the_wrong_kind_of_caller_is_permission_denied(identity_service: IdentityHarness) -> None:
    ids = identity_service
    org = ids.organization()
    patient = ids.patient(org)
    stub = ids.stub
    new_patient = register_request(identity_pb2.PATIENT, raw_public(generate_key()), assurance_level="IAL2")
    assert status_of(lambda: stub.RegisterIdentity(new_patient, metadata=patient.metadata)) == grpc.StatusCode.PERMISSION_DENIED
    service = register_request(identity_pb2.SERVICE, raw_public(generate_key()))  # operators only (a hospital may register its own auditors)
    assert status_of(lambda: stub.RegisterIdentity(service, metadata=org.metadata)) == grpc.StatusCode.PERMISSION_DENIED
    other = ids.patient(org)
    rotate = identity_pb2.RotateKeyRequest(identity_id=other.identity_id, public_key=raw_public(generate_key()))
    assert status_of(lambda: stub.RotateKey(rotate, metadata=patient.metadata)) == grpc.StatusCode.PERMISSION_DENIED


def test_a_revoked_identity_gets_no_token_and_changes_nothing(identity_service: IdentityHarness) -> None:
    ids = identity_service
    org = ids.organization()
    doc = ids.practitioner(org)
    stub = ids.stub
    challenge = stub.Challenge(identity_pb2.ChallengeRequest(identity_id=doc.identity_id))
    no_reason = identity_pb2.RevokeIdentityRequest(identity_id=doc.identity_id)
    assert status_of(lambda: stub.RevokeIdentity(no_reason, metadata=org.metadata)) == grpc.StatusCode.INVALID_ARGUMENT
    revoked = stub.RevokeIdentity(
        identity_pb2.RevokeIdentityRequest(identity_id=doc.identity_id, reason=identity_pb2.AFFILIATION_CHANGED),
        metadata=org.metadata,
    )
    assert revoked.identity.status == identity_pb2.REVOKED and len(revoked.event_ids) == 1
    assert revoked.identity.revocation_reason == identity_pb2.AFFILIATION_CHANGED
    assert status_of(lambda: stub.Challenge(identity_pb2.ChallengeRequest(identity_id=doc.identity_id))) == grpc.StatusCode.PERMISSION_DENIED
    late = identity_pb2.IssueTokenRequest(identity_id=doc.identity_id, nonce=challenge.nonce,
                                         signature=doc.sign(challenge.message), audience=["identity"])
    assert status_of(lambda: stub.IssueToken(late)) == grpc.StatusCode.PERMISSION_DENIED
    # its still-unexpired token is refused outright, for reads as for commands
    rotate = identity_pb2.RotateKeyRequest(identity_id=doc.identity_id, public_key=raw_public(generate_key()))
    assert status_of(lambda: stub.RotateKey(rotate, metadata=doc.metadata)) == grpc.StatusCode.PERMISSION_DENIED
    read = identity_pb2.GetIdentityRequest(identity_id=org.identity_id)
    assert status_of(lambda: stub.GetIdentity(read, metadata=doc.metadata)) == grpc.StatusCode.PERMISSION_DENIED


# ---- keys over time --------------------------------------------------------------


def _resolve(ids: IdentityHarness, who: Party, at: datetime | None = None, key_id: str = "") -> identity_pb2.ResolvedKey:
    request = identity_pb2.ResolveKeyRequest(identity_id=who.identity_id, key_id=key_id)
    if at is not None:
        request.at_time.FromDatetime(at)
    return ids.stub.ResolveKey(request, metadata=ids.operator.metadata)


def _verify(ids: IdentityHarness, who: Party, message: bytes, signature: bytes, at: datetime) -> identity_pb2.VerifySignatureResponse:
    request = identity_pb2.VerifySignatureRequest(identity_id=who.identity_id, message=message, signature=signature)
    request.at_time.FromDatetime(at)
    return ids.stub.VerifySignature(request, metadata=ids.operator.metadata)


def test_rotation_keeps_old_signatures_valid_as_of_their_time(identity_service: IdentityHarness) -> None:
    ids = identity_service
    patient = ids.patient(ids.organization())
    old_key, old_key_id = patient.private_key, patient.key_id
    signed_at = datetime.now(timezone.utc)
    consent = b"I consent to share my labs with clinic X"
    old_signature = old_key.sign(consent)
    time.sleep(0.05)
    new_key = generate_key()
    rotated = ids.stub.RotateKey(
        identity_pb2.RotateKeyRequest(identity_id=patient.identity_id, public_key=raw_public(new_key)), metadata=patient.metadata
    )
    assert rotated.key.previous_key_id == old_key_id and rotated.key.key_id == key_id_for(raw_public(new_key))
    after = datetime.now(timezone.utc) + timedelta(seconds=1)
    before = _resolve(ids, patient, signed_at)
    assert (before.key_id, before.public_key, before.revoked) == (old_key_id, raw_public(old_key), False)
    assert before.valid_until.ToDatetime(tzinfo=timezone.utc) == rotated.key.valid_from.ToDatetime(tzinfo=timezone.utc)
    assert _resolve(ids, patient, after).key_id == rotated.key.key_id
    assert _resolve(ids, patient).key_id == rotated.key.key_id
    assert _resolve(ids, patient, key_id=old_key_id).key_id == old_key_id
    assert status_of(lambda: _resolve(ids, patient, signed_at - timedelta(days=1))) == grpc.StatusCode.NOT_FOUND
    assert _verify(ids, patient, consent, old_signature, signed_at).valid
    assert not _verify(ids, patient, consent, old_signature, after).valid
    assert _verify(ids, patient, consent, new_key.sign(consent), after).valid
    # only the new key authenticates now
    patient.private_key = new_key
    assert ids.login(patient).token
    challenge = identity_pb2.ChallengeRequest(identity_id=patient.identity_id, key_id=old_key_id)
    assert status_of(lambda: ids.stub.Challenge(challenge)) == grpc.StatusCode.FAILED_PRECONDITION


def test_an_organization_rotates_and_revokes_its_practitioners_keys(identity_service: IdentityHarness) -> None:
    ids = identity_service
    org = ids.organization()
    doc = ids.practitioner(org)
    new_key = generate_key()
    ids.stub.RotateKey(
        identity_pb2.RotateKeyRequest(identity_id=doc.identity_id, public_key=raw_public(new_key)), metadata=org.metadata
    )
    revoked = ids.stub.RevokeKey(
        identity_pb2.RevokeKeyRequest(identity_id=doc.identity_id, key_id=doc.key_id), metadata=org.metadata
    )
    assert revoked.key.revoked and revoked.key.key_id == doc.key_id
    assert _resolve(ids, doc, key_id=doc.key_id).revoked
    doc.private_key = new_key
    assert ids.login(doc).token
    # someone else's organization may not
    rotate = identity_pb2.RotateKeyRequest(identity_id=doc.identity_id, public_key=raw_public(generate_key()))
    clinic = ids.organization("CLINIC")
    assert status_of(lambda: ids.stub.RotateKey(rotate, metadata=clinic.metadata)) == grpc.StatusCode.PERMISSION_DENIED
    # a key another identity uses is refused
    taken = identity_pb2.RotateKeyRequest(identity_id=doc.identity_id, public_key=clinic.public_key)
    assert status_of(lambda: ids.stub.RotateKey(taken, metadata=org.metadata)) == grpc.StatusCode.ALREADY_EXISTS


async def test_memberships_flow_into_tokens_and_an_ended_one_voids_them(identity_service: IdentityHarness) -> None:
    ids = identity_service
    org, clinic = ids.organization(), ids.organization("CLINIC")
    doc = ids.practitioner(org)
    membership_id = ids.grant_membership(clinic, doc, "nurse", accepted=True)
    read = identity_pb2.GetIdentityRequest(identity_id=doc.identity_id)
    seen = ids.stub.GetIdentity(read, metadata=doc.metadata)
    assert {(m.organization_id, m.role, m.active, m.HasField("acceptance")) for m in seen.memberships} == {
        (org.identity_id, "physician", True, False), (clinic.identity_id, "nurse", True, True)
    }
    ids.login(doc)
    assert set((await make_verifier(ids.address).verify(doc.token, "identity")).organizations) == {
        org.identity_id, clinic.identity_id
    }
    ended = ids.stub.EndMembership(identity_pb2.EndMembershipRequest(membership_id=membership_id), metadata=clinic.metadata)
    assert not ended.membership.active and ended.membership.HasField("ended_at")
    # the token still lists the clinic: refused at once, and a new one does not list it
    assert status_of(lambda: ids.stub.GetIdentity(read, metadata=doc.metadata)) == grpc.StatusCode.UNAUTHENTICATED
    ids.login(doc)
    assert ids.stub.GetIdentity(read, metadata=doc.metadata).identity_id == doc.identity_id
    again = identity_pb2.EndMembershipRequest(membership_id=membership_id)
    assert status_of(lambda: ids.stub.EndMembership(again, metadata=clinic.metadata)) == grpc.StatusCode.FAILED_PRECONDITION
    unknown = identity_pb2.EndMembershipRequest(membership_id="nope")
    assert status_of(lambda: ids.stub.EndMembership(unknown, metadata=clinic.metadata)) == grpc.StatusCode.NOT_FOUND


async def test_service_credentials_and_identity_client(identity_service: IdentityHarness) -> None:
    ids = identity_service
    svc = ids.service()
    patient = ids.patient(ids.organization())
    with pytest.raises(ValueError):
        IdentityClient(ids.address, ServiceCredentials(ids.address, svc.identity_id, svc.private_key, audience=("ledger",)))
    client = IdentityClient(
        ids.address, ServiceCredentials(ids.address, svc.identity_id, svc.private_key, audience=("identity",))
    )
    try:
        token = await client.credentials.token()
        assert token == await client.credentials.token()  # cached
        caller = await make_verifier(ids.address).verify(token, "identity")
        assert caller.kind == "SERVICE" and caller.audience == ("identity",)
        key = await client.resolve_key(patient.identity_id)
        assert key.public_key == patient.public_key and not key.revoked
        identity = await client.get_identity(patient.identity_id)
        assert identity.kind == identity_pb2.PATIENT and not identity.HasField("demographics")
        assert (await client.verify_signature(patient.identity_id, b"m", patient.sign(b"m"))).valid
        with pytest.raises(NotFound):
            await client.get_identity("no-such-identity")
    finally:
        await client.close()


# ---- issue 9: no takeover across hospitals, audiences, revoked keys, Challenge limits ----


async def test_another_hospital_cannot_take_over_a_practitioner(identity_service: IdentityHarness, topics: Topics) -> None:
    """Issue 9, item 1, through the public API: hospital B grants itself a
    membership of hospital A's practitioner and rotates its key. Both are
    PERMISSION_DENIED and nothing about the practitioner reaches identity.events."""
    ids = identity_service
    stub = ids.stub
    hospital_a, hospital_b = ids.organization(), ids.organization()
    doc = ids.practitioner(hospital_a)
    grant = identity_pb2.GrantMembershipRequest(member_id=doc.identity_id, organization_id=hospital_b.identity_id, role="physician")
    assert status_of(lambda: stub.GrantMembership(grant, metadata=hospital_b.metadata)) == grpc.StatusCode.PERMISSION_DENIED
    # an acceptance B signed itself under doc's key id, or one doc signed for something else, does not do either
    impostor = Party(doc.identity_id, "PRACTITIONER", hospital_b.private_key)
    forged = acceptance(impostor, hospital_b.identity_id, "physician")
    forged.key_id = doc.key_id
    for accepted in (forged, acceptance(doc, hospital_b.identity_id, "nurse"), acceptance(doc, hospital_a.identity_id, "physician")):
        grant.acceptance.CopyFrom(accepted)
        assert status_of(lambda: stub.GrantMembership(grant, metadata=hospital_b.metadata)) == grpc.StatusCode.PERMISSION_DENIED
    rotate = identity_pb2.RotateKeyRequest(identity_id=doc.identity_id, public_key=raw_public(generate_key()))
    assert status_of(lambda: stub.RotateKey(rotate, metadata=hospital_b.metadata)) == grpc.StatusCode.PERMISSION_DENIED
    revoke = identity_pb2.RevokeKeyRequest(identity_id=doc.identity_id, key_id=doc.key_id)
    assert status_of(lambda: stub.RevokeKey(revoke, metadata=hospital_b.metadata)) == grpc.StatusCode.PERMISSION_DENIED
    # a later command's event marks how far the topic must be read
    marker = ids.patient(hospital_a).event_ids[0]
    envelopes = await _read_until(topics.identity_events, marker)
    assert {e.event_id for e in envelopes if e.aggregate_id == doc.identity_id} == set(doc.event_ids)
    seen = stub.GetIdentity(identity_pb2.GetIdentityRequest(identity_id=doc.identity_id), metadata=hospital_a.metadata)
    assert [m.organization_id for m in seen.memberships] == [hospital_a.identity_id] and len(seen.keys) == 1

    # With doc's own acceptance B may enrol doc, once, and still gets no power over doc's keys.
    grant.acceptance.CopyFrom(acceptance(doc, hospital_b.identity_id, "physician"))
    membership = stub.GrantMembership(grant, metadata=hospital_b.metadata).membership
    assert membership.active and membership.acceptance.key_id == doc.key_id
    assert status_of(lambda: stub.RotateKey(rotate, metadata=hospital_b.metadata)) == grpc.StatusCode.PERMISSION_DENIED
    stub.EndMembership(identity_pb2.EndMembershipRequest(membership_id=membership.membership_id), metadata=hospital_b.metadata)
    assert status_of(lambda: stub.GrantMembership(grant, metadata=hospital_b.metadata)) == grpc.StatusCode.PERMISSION_DENIED


async def _read_until(topic: str, event_id: str) -> list[Any]:
    """Every envelope on topic once the one with event_id is there."""
    deadline = time.monotonic() + 30
    while True:
        envelopes = await read_topic(topic)
        if any(e.event_id == event_id for e in envelopes):
            return envelopes
        assert time.monotonic() < deadline, f"event {event_id} never reached {topic}"
        await asyncio.sleep(0.2)


def test_tokens_name_their_services_and_die_with_their_key(identity_service: IdentityHarness) -> None:
    ids = identity_service
    stub = ids.stub
    patient = ids.patient(ids.organization())
    for audience in ([], ["billing"], ["identity", "identity"]):
        challenge = stub.Challenge(identity_pb2.ChallengeRequest(identity_id=patient.identity_id))
        request = identity_pb2.IssueTokenRequest(
            identity_id=patient.identity_id, nonce=challenge.nonce, signature=patient.sign(challenge.message),
            audience=audience,
        )
        assert status_of(lambda: stub.IssueToken(request)) == grpc.StatusCode.INVALID_ARGUMENT, audience
    read = identity_pb2.GetIdentityRequest(identity_id=patient.identity_id)
    assert status_of(lambda: stub.GetIdentity(read, metadata=ids.token_for(patient, "ledger"))) == grpc.StatusCode.UNAUTHENTICATED
    stolen = ids.token_for(patient, "identity")  # obtained with the key that is about to be compromised
    assert stub.GetIdentity(read, metadata=stolen).identity_id == patient.identity_id
    old_key_id, new_key = patient.key_id, generate_key()
    stub.RotateKey(identity_pb2.RotateKeyRequest(identity_id=patient.identity_id, public_key=raw_public(new_key)), metadata=stolen)
    assert stub.GetIdentity(read, metadata=stolen)  # rotation alone does not void it
    stub.RevokeKey(identity_pb2.RevokeKeyRequest(identity_id=patient.identity_id, key_id=old_key_id), metadata=stolen)
    assert status_of(lambda: stub.GetIdentity(read, metadata=stolen)) == grpc.StatusCode.UNAUTHENTICATED
    patient.private_key = new_key
    assert stub.GetIdentity(read, metadata=ids.token_for(patient, "identity")).identity_id == patient.identity_id


async def test_challenges_are_rate_limited_and_unused_nonces_expire(
    spawn: Callable[..., ServiceProcess], tmp_path: Path, service_env: dict[str, str]
) -> None:
    operator_key = generate_key()
    env = identity_env(tmp_path, operator_key)
    limits = {
        "MEDLEDGER_IDENTITY_CHALLENGE_IDENTITY_BURST": "3", "MEDLEDGER_IDENTITY_CHALLENGE_IDENTITY_PER_MINUTE": "0.01",
        "MEDLEDGER_IDENTITY_CHALLENGE_PEER_BURST": "8", "MEDLEDGER_IDENTITY_CHALLENGE_PEER_PER_MINUTE": "0.01",
        "MEDLEDGER_IDENTITY_CHALLENGE_TTL_S": "2", "MEDLEDGER_IDENTITY_CHALLENGE_SWEEP_INTERVAL_S": "0.2",
    }
    process = spawn("identity", **env, **limits).wait_serving()
    ids = IdentityHarness(process.address, operator_key, process, env)  # the operator's login: 1 challenge
    try:
        org = ids.organization()  # 2
        first, second = (ids.register("PATIENT", org, "IAL2", login=False) for _ in range(2))

        def challenge(who: Party) -> identity_pb2.ChallengeResponse:
            return ids.stub.Challenge(identity_pb2.ChallengeRequest(identity_id=who.identity_id), timeout=5)

        nonces = [challenge(first).nonce for _ in range(3)]  # 5: the identity's burst
        with pytest.raises(grpc.RpcError) as refused:
            challenge(first)  # 6: refused for the identity, counted for the address
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "identity" in str(refused.value.details())
        nonces += [challenge(second).nonce for _ in range(2)]  # 8: the address's burst
        with pytest.raises(grpc.RpcError) as refused:
            challenge(second)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "address" in str(refused.value.details())

        conn = await asyncpg.connect(service_env["MEDLEDGER_IDENTITY_DATABASE_URL"])
        try:
            async def unused() -> int:
                return int(await conn.fetchval("SELECT count(*) FROM challenges WHERE nonce = ANY($1::bytea[])", nonces))

            assert await unused() > 0  # stored while they could still be answered
            deadline = time.monotonic() + 30
            while await unused():  # no one answers them: the sweep removes them once expired
                assert time.monotonic() < deadline, "expired challenges were not swept"
                await asyncio.sleep(0.2)
        finally:
            await conn.close()
    finally:
        ids.close()



async def test_a_command_not_yet_on_kafka_answers_unavailable_and_takes_effect_once_published(
    spawn: Callable[..., ServiceProcess], tmp_path: Path, topics: Topics
) -> None:
    """Other services act on identity.events (records checks authors' keys
    against its projection of it), so identity answers only once an event is
    published; committed but not yet published, the caller hears UNAVAILABLE
    and that it is recorded. A publish wait of 0 s makes every command that."""
    operator_key = generate_key()
    env = identity_env(tmp_path, operator_key)
    process = spawn("identity", **env, MEDLEDGER_IDENTITY_PUBLISH_WAIT_S="0").wait_serving()
    ids = IdentityHarness(process.address, operator_key, process, env)
    # The relay may, rarely, publish before the handler looks (a 0 s wait is
    # a race, not a block): such a registration rightly answers OK, and the
    # test registers another until one is answered before it was published.
    answer: grpc.RpcError | None = None
    registrations = 0
    while answer is None:
        assert registrations < 10, "every registration was published before identity answered"
        request = register_request(identity_pb2.ORGANIZATION, raw_public(generate_key()), organization_type="HOSPITAL")
        registrations += 1
        try:
            ids.stub.RegisterIdentity(request, metadata=ids.operator.metadata, timeout=15)
        except grpc.RpcError as exc:
            answer = exc
    assert answer.code() == grpc.StatusCode.UNAVAILABLE
    assert "recorded" in (answer.details() or "") and "do not repeat it" in (answer.details() or "")
    # Recorded: the same registration again is refused, not done twice ...
    assert status_of(lambda: ids.stub.RegisterIdentity(request, metadata=ids.operator.metadata, timeout=15)) == (
        grpc.StatusCode.ALREADY_EXISTS
    )
    # ... and it takes effect once the relay publishes it.
    deadline = time.monotonic() + 30
    while sum(e.event_type == "medledger.v1.IdentityRegistered" and e.actor == ids.operator.identity_id
              for e in await read_topic(topics.identity_events)) < registrations:
        assert time.monotonic() < deadline, "the recorded registration never reached identity.events"
        await asyncio.sleep(0.2)
    ids.close()
