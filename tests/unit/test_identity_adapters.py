"""The identity service's pure adapters: event codec, PHI vault, settings."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medledger.testing.producers import TestProducers
from medledger.identity import codec, domain, keyfiles
from medledger.identity.settings import IdentitySettings, bootstrap_identity_id
from medledger.identity.vault import Vault, VaultError
from medledger.runtime.errors import InvalidArgument, SettingsError
from medledger.v1 import events_pb2, identity_pb2

T = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
KEY = bytes(range(1, 33))

EVENTS: list[domain.Event] = [
    domain.IdentityRegistered("i", domain.Kind.PRACTITIONER, "k1", KEY, "IAL2", "org", "", T),
    domain.KeyRotated("i", "k2", KEY, "k1", T),
    domain.KeyRevoked("i", "k1", T),
    domain.IdentityRevoked("i", "AFFILIATION_CHANGED", T),
    domain.MembershipGranted("m", "i", "org", "physician", T),
    domain.MembershipGranted("m", "i", "org", "physician", T, domain.Acceptance("k1", T, b"n" * 16, b"s" * 64)),
    domain.MembershipEnded("m", "i", "org", T),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_events_round_trip_through_envelopes(event: domain.Event) -> None:
    env = codec.to_envelope(event, actor="org")
    wire = events_pb2.EventEnvelope.FromString(env.SerializeToString())
    assert wire.event_type == f"medledger.v1.{type(event).__name__}"
    assert wire.aggregate_id == "i" and wire.producer == "identity" and wire.actor == "org"
    assert codec.from_envelope(wire) == event


def test_revocation_reasons_on_events_are_codes_never_text() -> None:
    """Free text can carry PHI; the event field is an enum, and a reason the
    codec does not know is sent as UNSPECIFIED rather than as text."""
    field = identity_pb2.IdentityRevoked.DESCRIPTOR.fields_by_name["reason"]
    assert field.enum_type is not None and field.enum_type.name == "RevocationReason"
    env = codec.to_envelope(domain.IdentityRevoked("i", "Mrs Smith died of cancer", T), actor="org")
    assert b"Smith" not in env.SerializeToString()
    assert codec.reason_from_proto(identity_pb2.KEY_COMPROMISE) == "KEY_COMPROMISE"
    assert codec.reason_from_proto(99) == codec.reason_from_proto(0) == ""
    assert set(identity_pb2.RevocationReason.keys()) - {"REVOCATION_REASON_UNSPECIFIED"} == domain.REVOCATION_REASONS


def test_unknown_event_types_are_skipped() -> None:
    env = codec.to_envelope(EVENTS[0], actor="")
    env.event_type = "medledger.v1.SomethingNew"
    assert codec.from_envelope(env) is None


def test_unknown_kinds_are_invalid() -> None:
    assert codec.kind_from_proto(identity_pb2.PATIENT) is domain.Kind.PATIENT
    for value in (identity_pb2.IDENTITY_KIND_UNSPECIFIED, 99):
        with pytest.raises(InvalidArgument, match="kind"):
            codec.kind_from_proto(value)


def test_vault_seals_per_identity_and_refuses_another_key() -> None:
    vault = Vault(b"k" * 32)
    sealed = vault.seal("alice", b"Alice 1970-01-01")
    assert b"Alice" not in sealed.ciphertext + sealed.wrapped_key
    assert vault.open("alice", sealed) == b"Alice 1970-01-01"
    with pytest.raises(VaultError):
        vault.open("bob", sealed)  # bound to the identity id
    with pytest.raises(VaultError):
        Vault(b"x" * 32).open("alice", sealed)


def test_mrn_hash_is_keyed_and_per_organization() -> None:
    vault = Vault(b"k" * 32)
    assert vault.mrn_hash("org1", "MRN-1") == vault.mrn_hash("org1", " MRN-1 ")
    assert vault.mrn_hash("org1", "MRN-1") != vault.mrn_hash("org2", "MRN-1")
    assert vault.mrn_hash("org1", "MRN-1") != Vault(b"x" * 32).mrn_hash("org1", "MRN-1")


def _producers(tmp_path: Path) -> dict[str, str]:
    """The event-key settings every service needs (no defaults: keys are never generated silently)."""
    return TestProducers().write(tmp_path / "producers")


def test_keys_are_generated_only_where_not_configured(tmp_path: Path) -> None:
    env = {**_producers(tmp_path), "MEDLEDGER_RUN_DIR": str(tmp_path)}
    first = IdentitySettings.from_env(env)
    assert (tmp_path / "keys" / "identity-token.key").stat().st_mode & 0o777 == 0o600
    again = IdentitySettings.from_env(env)
    assert first.data_key == again.data_key
    assert first.token_keys.signing_key_id == again.token_keys.signing_key_id
    missing = dict(env, MEDLEDGER_IDENTITY_DATA_KEY_FILE=str(tmp_path / "absent.key"))
    with pytest.raises(SettingsError, match="MEDLEDGER_IDENTITY_DATA_KEY_FILE"):
        IdentitySettings.from_env(missing)


def test_challenge_limits_have_defaults_and_refuse_nonsense(tmp_path: Path) -> None:
    env = {**_producers(tmp_path), "MEDLEDGER_RUN_DIR": str(tmp_path)}
    limits = IdentitySettings.from_env(env).challenge_limits
    assert (limits.identity_burst, limits.identity_per_minute, limits.peer_burst, limits.peer_per_minute) == (10, 20, 200, 1200)
    tuned = IdentitySettings.from_env(dict(env, MEDLEDGER_IDENTITY_CHALLENGE_PEER_BURST="5"))
    assert tuned.challenge_limits.peer_burst == 5
    for name, value in [("IDENTITY_BURST", "0"), ("PEER_PER_MINUTE", "0"), ("SWEEP_INTERVAL_S", "-1")]:
        with pytest.raises(SettingsError, match=name):
            IdentitySettings.from_env(dict(env, **{f"MEDLEDGER_IDENTITY_CHALLENGE_{name}": value}))
    with pytest.raises(SettingsError, match="ACCEPTANCE_MAX_AGE"):
        IdentitySettings.from_env(dict(env, MEDLEDGER_IDENTITY_ACCEPTANCE_MAX_AGE_S="0"))


def test_token_ttl_is_capped_at_fifteen_minutes(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="TOKEN_TTL"):
        IdentitySettings.from_env({**_producers(tmp_path), "MEDLEDGER_RUN_DIR": str(tmp_path), "MEDLEDGER_IDENTITY_TOKEN_TTL_S": "901"})


def test_bootstrap_key_setting(tmp_path: Path) -> None:
    text = keyfiles.public_key_text(KEY)
    s = IdentitySettings.from_env({**_producers(tmp_path), "MEDLEDGER_RUN_DIR": str(tmp_path), "MEDLEDGER_IDENTITY_BOOTSTRAP_PUBLIC_KEY": text})
    assert s.bootstrap_public_key == KEY
    assert bootstrap_identity_id(KEY) == bootstrap_identity_id(KEY) != bootstrap_identity_id(bytes(32))
    with pytest.raises(SettingsError, match="BOOTSTRAP"):
        IdentitySettings.from_env({**_producers(tmp_path), "MEDLEDGER_RUN_DIR": str(tmp_path), "MEDLEDGER_IDENTITY_BOOTSTRAP_PUBLIC_KEY": "nope"})


def test_retired_token_keys_stay_published_after_the_current_one(tmp_path: Path) -> None:
    old = tmp_path / "old-token.key"
    keyfiles.write_secret(old, keyfiles.private_key_pem(Ed25519PrivateKey.generate()))
    s = IdentitySettings.from_env({**_producers(tmp_path), "MEDLEDGER_RUN_DIR": str(tmp_path), "MEDLEDGER_IDENTITY_TOKEN_PREVIOUS_KEY_FILES": str(old)})
    published = s.token_keys.published()
    assert list(published)[0] == s.token_keys.signing_key_id and len(published) == 2
