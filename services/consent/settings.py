"""The consent service's own settings, on top of the common ones.

The consent service calls the identity service (ResolveKey, GetIdentity) as a
SERVICE identity: an operator registers it once (``medledger identity keygen``
then ``medledger identity register --kind SERVICE``) and gives it its id
(MEDLEDGER_CONSENT_IDENTITY_ID) and private key file
(MEDLEDGER_CONSENT_KEY_FILE). Decision: the pair is optional. Without it the
service still serves every read and decision (they need only Kafka), warns at
start, and answers UNAVAILABLE, naming both variables, to the commands that
must ask the identity service (GrantConsent, representatives). A stack can
then start consent before its service identity exists. One of the pair
without the other is a misconfiguration and stops the service.

The data key (MEDLEDGER_CONSENT_DATA_KEY_FILE) seals break-glass
justifications and review notes at rest; it follows the rules of every key
file (runtime/secret_files.py): required to exist when set, generated under
``$MEDLEDGER_RUN_DIR/keys/consent-data.key`` when not (development).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medledger.runtime.errors import SettingsError
from medledger.runtime.identity_client import load_private_key
from medledger.runtime.envelope import EnvelopeVerifier, EventSigner
from medledger.runtime.secret_files import load_data_key
from medledger.runtime.settings import Topics, env_float, env_int, env_str, event_signer, event_verifier

MAX_BREAK_GLASS_TTL_S = 24 * 3600


@dataclass(frozen=True)
class ConsentSettings:
    identity_address: str
    service_identity_id: str
    service_key: Ed25519PrivateKey | None
    # A replica answers decisions only while its projection has caught up with
    # a log end it observed at most this long ago; RevokeConsent waits this
    # long after its event is acknowledged (see stream.py).
    max_staleness_s: float
    # How often each replica asks Kafka for the log end.
    freshness_probe_s: float
    # How long a break-glass access lasts (at most MAX_BREAK_GLASS_TTL_S).
    break_glass_ttl_s: int
    # Break-glass accesses one practitioner may invoke in any 24 hours.
    break_glass_daily_limit: int
    # How far in the future a signature's signed_at may be (clock skew).
    signing_skew_s: int
    # How old a signature's signed_at may be when it is submitted.
    signature_max_age_s: int
    # Seals break-glass justifications and review notes at rest
    # (runtime/sealing.py), like identity's demographics.
    data_key: bytes
    # AccessDecided events handed to Kafka but not acknowledged yet; beyond
    # this CheckAccess fails closed (UNAVAILABLE) rather than decide unrecorded.
    max_unrecorded_decisions: int
    # How often the leader replica publishes ConsentExpired for ended windows.
    expiry_interval_s: float
    # Signs every event this service publishes; verifies every event it reads.
    event_signer: EventSigner
    events: EnvelopeVerifier
    # How long a command waits for its events to reach Kafka through the outbox.
    publish_wait_s: float

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ConsentSettings":
        identity_id = env_str("MEDLEDGER_CONSENT_IDENTITY_ID", "", env)
        key_file = env_str("MEDLEDGER_CONSENT_KEY_FILE", "", env)
        if bool(identity_id) != bool(key_file):
            raise SettingsError("set both MEDLEDGER_CONSENT_IDENTITY_ID and MEDLEDGER_CONSENT_KEY_FILE, or neither")
        settings = cls(
            identity_address=env_str("MEDLEDGER_IDENTITY_ADDRESS", "127.0.0.1:50051", env),
            service_identity_id=identity_id,
            service_key=load_private_key(Path(key_file)) if key_file else None,
            max_staleness_s=env_int("MEDLEDGER_CONSENT_MAX_STALENESS_MS", 500, env) / 1000,
            freshness_probe_s=env_int("MEDLEDGER_CONSENT_FRESHNESS_PROBE_MS", 50, env) / 1000,
            break_glass_ttl_s=env_int("MEDLEDGER_CONSENT_BREAK_GLASS_TTL_S", 4 * 3600, env),
            break_glass_daily_limit=env_int("MEDLEDGER_CONSENT_BREAK_GLASS_DAILY_LIMIT", 3, env),
            signing_skew_s=env_int("MEDLEDGER_CONSENT_SIGNING_SKEW_S", 300, env),
            signature_max_age_s=env_int("MEDLEDGER_CONSENT_SIGNATURE_MAX_AGE_S", 24 * 3600, env),
            data_key=load_data_key("MEDLEDGER_CONSENT_DATA_KEY_FILE", "consent-data.key", env),
            max_unrecorded_decisions=env_int("MEDLEDGER_CONSENT_MAX_UNRECORDED_DECISIONS", 10_000, env),
            expiry_interval_s=env_float("MEDLEDGER_CONSENT_EXPIRY_INTERVAL_S", 1.0, env),
            event_signer=event_signer("consent", env),
            events=event_verifier(Topics(env_str("MEDLEDGER_TOPIC_PREFIX", "", env)), env),
            publish_wait_s=env_float("MEDLEDGER_CONSENT_PUBLISH_WAIT_S", 5.0, env),
        )
        if not 0 < settings.max_staleness_s <= 1.0:
            raise SettingsError("MEDLEDGER_CONSENT_MAX_STALENESS_MS must be 1..1000 (revocation must reach every replica within 1 s)")
        if not 0 < settings.freshness_probe_s < settings.max_staleness_s:
            raise SettingsError("MEDLEDGER_CONSENT_FRESHNESS_PROBE_MS must be positive and below MEDLEDGER_CONSENT_MAX_STALENESS_MS")
        if not 0 < settings.break_glass_ttl_s <= MAX_BREAK_GLASS_TTL_S:
            raise SettingsError(f"MEDLEDGER_CONSENT_BREAK_GLASS_TTL_S must be 1..{MAX_BREAK_GLASS_TTL_S} (24 h at most)")
        if settings.break_glass_daily_limit <= 0:
            raise SettingsError("MEDLEDGER_CONSENT_BREAK_GLASS_DAILY_LIMIT must be positive")
        if settings.signature_max_age_s <= 0:
            raise SettingsError("MEDLEDGER_CONSENT_SIGNATURE_MAX_AGE_S must be positive")
        return settings
