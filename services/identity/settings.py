"""The identity service's own settings, on top of the common ones.

Key files (decision, runtime/secret_files.py): the token signing key and the
data key are read from MEDLEDGER_IDENTITY_TOKEN_KEY_FILE and
MEDLEDGER_IDENTITY_DATA_KEY_FILE. When a variable is set, its file must exist:
production mounts them from Secrets and a missing mount must stop the service,
never be papered over. When a variable is NOT set (local development, tests),
the key lives under ``$MEDLEDGER_RUN_DIR/keys/`` and is generated on first start. A data key that
changed under a database already holding ciphertext is caught at start (the
database records the key's check id) and stops the service too.

Bootstrap (decision): the first organization is the one whose public key is
named by MEDLEDGER_IDENTITY_BOOTSTRAP_PUBLIC_KEY (base64 of the raw key) or
MEDLEDGER_IDENTITY_BOOTSTRAP_PUBLIC_KEY_FILE (a ``.pub`` written by
``medledger identity keygen``). On start, if the database holds no identity at
all, the service registers it as an OPERATOR organization with the id
``bootstrap_identity_id(public key)``. Once any identity exists the setting is
ignored, so changing it later cannot mint a second root.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medledger.identity import keyfiles
from medledger.identity.domain import key_id_for
from medledger.runtime.auth import MAX_TOKEN_TTL_S
from medledger.runtime import secret_files
from medledger.runtime.errors import SettingsError
from medledger.runtime.identity_client import load_private_key
from medledger.runtime.secret_files import existing_key_file
from medledger.runtime.envelope import EnvelopeVerifier, EventSigner
from medledger.runtime.settings import Topics, event_signer, event_verifier, env_float, env_int, env_str

_BOOTSTRAP_NAMESPACE = uuid.UUID("5c1d3f0e-6a57-4e57-9a55-6d65646c6764")


def bootstrap_identity_id(public_key: bytes) -> str:
    """The bootstrap organization's id, derived from its key so an operator
    knows it before the service starts (``medledger identity keygen`` prints it)."""
    return str(uuid.uuid5(_BOOTSTRAP_NAMESPACE, key_id_for(public_key)))


@dataclass(frozen=True)
class TokenKeys:
    """The key that signs tokens now, and older ones still published so tokens
    they signed verify until they expire (key rotation)."""

    signing_key: Ed25519PrivateKey
    retired: tuple[bytes, ...] = ()

    @property
    def signing_key_id(self) -> str:
        return key_id_for(keyfiles.raw_public_key(self.signing_key))

    def published(self) -> dict[str, bytes]:
        """key id -> raw public key, the current key first."""
        current = keyfiles.raw_public_key(self.signing_key)
        keys = {self.signing_key_id: current}
        keys.update({key_id_for(raw): raw for raw in self.retired})
        return keys


@dataclass(frozen=True)
class ChallengeLimits:
    """Challenge is public, and each one costs a database write: token buckets
    per identity asked for and per calling address, counted by each replica
    (docs/architecture.md, Decisions). Unused nonces are swept every
    ``sweep_interval_s``."""

    identity_burst: int = 10
    identity_per_minute: float = 20.0
    peer_burst: int = 200
    peer_per_minute: float = 1200.0
    sweep_interval_s: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ChallengeLimits":
        def positive(name: str, default: float) -> float:
            variable = "MEDLEDGER_IDENTITY_CHALLENGE_" + name
            value = (env_int if isinstance(default, int) else env_float)(variable, default, env)
            if value <= 0:
                raise SettingsError(f"{variable} must be positive, got {value}")
            return value

        return cls(
            identity_burst=int(positive("IDENTITY_BURST", cls.identity_burst)),
            identity_per_minute=positive("IDENTITY_PER_MINUTE", cls.identity_per_minute),
            peer_burst=int(positive("PEER_BURST", cls.peer_burst)),
            peer_per_minute=positive("PEER_PER_MINUTE", cls.peer_per_minute),
            sweep_interval_s=positive("SWEEP_INTERVAL_S", cls.sweep_interval_s),
        )


@dataclass(frozen=True)
class IdentitySettings:
    token_keys: TokenKeys
    data_key: bytes
    bootstrap_public_key: bytes | None
    token_ttl_s: int
    challenge_ttl_s: int
    publish_wait_s: float
    # Signs every event this service publishes; verifies what it reads back.
    event_signer: EventSigner
    events: EnvelopeVerifier
    challenge_limits: ChallengeLimits = ChallengeLimits()
    # How old a member's signed acceptance of a membership may be when presented.
    acceptance_max_age_s: int = 86400

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "IdentitySettings":
        ttl = env_int("MEDLEDGER_IDENTITY_TOKEN_TTL_S", 600, env)
        if not 0 < ttl <= MAX_TOKEN_TTL_S:
            raise SettingsError(f"MEDLEDGER_IDENTITY_TOKEN_TTL_S must be 1..{MAX_TOKEN_TTL_S}, got {ttl}")
        challenge_ttl = env_int("MEDLEDGER_IDENTITY_CHALLENGE_TTL_S", 60, env)
        if not 0 < challenge_ttl <= 600:
            raise SettingsError(f"MEDLEDGER_IDENTITY_CHALLENGE_TTL_S must be 1..600, got {challenge_ttl}")
        acceptance_age = env_int("MEDLEDGER_IDENTITY_ACCEPTANCE_MAX_AGE_S", 86400, env)
        if not 0 < acceptance_age <= 30 * 86400:
            raise SettingsError(f"MEDLEDGER_IDENTITY_ACCEPTANCE_MAX_AGE_S must be 1..2592000, got {acceptance_age}")
        return cls(
            token_keys=load_token_keys(env),
            data_key=load_data_key(env),
            bootstrap_public_key=load_bootstrap_key(env),
            token_ttl_s=ttl,
            challenge_ttl_s=challenge_ttl,
            publish_wait_s=env_float("MEDLEDGER_IDENTITY_PUBLISH_WAIT_S", 5.0, env),
            event_signer=event_signer("identity", env),
            events=event_verifier(Topics(env_str("MEDLEDGER_TOPIC_PREFIX", "", env)), env),
            challenge_limits=ChallengeLimits.from_env(env),
            acceptance_max_age_s=acceptance_age,
        )


def load_token_keys(env: Mapping[str, str] | None = None) -> TokenKeys:
    def fresh() -> bytes:
        return keyfiles.private_key_pem(Ed25519PrivateKey.generate())

    signing = load_private_key(existing_key_file("MEDLEDGER_IDENTITY_TOKEN_KEY_FILE", "identity-token.key", fresh, env))
    names = env_str("MEDLEDGER_IDENTITY_TOKEN_PREVIOUS_KEY_FILES", "", env).split(",")
    retired = tuple(keyfiles.raw_public_key(load_private_key(Path(name))) for name in names if name)
    return TokenKeys(signing, retired)


def load_data_key(env: Mapping[str, str] | None = None) -> bytes:
    return secret_files.load_data_key("MEDLEDGER_IDENTITY_DATA_KEY_FILE", "identity-data.key", env)


def load_bootstrap_key(env: Mapping[str, str] | None = None) -> bytes | None:
    text = env_str("MEDLEDGER_IDENTITY_BOOTSTRAP_PUBLIC_KEY", "", env)
    if text:
        return keyfiles.parse_public_key(text, "MEDLEDGER_IDENTITY_BOOTSTRAP_PUBLIC_KEY")
    path = env_str("MEDLEDGER_IDENTITY_BOOTSTRAP_PUBLIC_KEY_FILE", "", env)
    if not path:
        return None
    raw = keyfiles.read_file(Path(path), "MEDLEDGER_IDENTITY_BOOTSTRAP_PUBLIC_KEY_FILE")
    return keyfiles.parse_public_key(raw.decode(errors="replace"), path)
