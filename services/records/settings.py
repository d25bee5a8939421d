"""The records service's own settings, on top of the common ones.

The service calls the ledger (entries by event id, for proofs) as a SERVICE
identity, with a token the identity service issues:
MEDLEDGER_RECORDS_IDENTITY_ID and MEDLEDGER_RECORDS_KEY_FILE, registered like
the consent service's (`deploy/stack.sh`). Authors' and erasure signers' keys
come from the projection of identity.events, not from identity. As for consent
the pair is optional: without it the service starts, warns, and answers
UNAVAILABLE (naming both variables) to the rpcs that need proofs.
It calls the consent service only with the reading user's own token.

MEDLEDGER_RECORDS_KEK_FILE holds the key-encryption key (base64 of 32 random
bytes, as `medledger identity keygen --data-key` writes): it wraps every
patient's data key, so losing it loses every record and changing it needs a
re-wrap. It is required: the service never invents one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medledger.identity import keyfiles
from medledger.records.crypto import KeyWrapper, LocalKeyWrapper
from medledger.runtime.envelope import EnvelopeVerifier, EventSigner
from medledger.runtime.errors import SettingsError
from medledger.runtime.identity_client import load_private_key
from medledger.runtime.settings import Topics, env_float, env_int, env_str, event_signer, event_verifier


@dataclass(frozen=True)
class RecordsSettings:
    identity_address: str
    consent_address: str
    ledger_address: str
    service_identity_id: str
    service_key: Ed25519PrivateKey | None
    key_wrapper: KeyWrapper
    event_signer: EventSigner
    events: EnvelopeVerifier
    # How far a signed_at may be from this service's clock (attestations: both
    # ways; erasure requests: into the future).
    signing_skew_s: int
    # How long a command waits for the projection to catch up with identity
    # and consent events before answering UNAVAILABLE.
    sync_wait_s: float
    # How long a write waits for its event to reach records.events before
    # answering anyway (the event is committed and will be published).
    publish_wait_s: float
    # Largest FHIR Bundle ExportPatientRecords returns.
    max_export_bytes: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "RecordsSettings":
        identity_id = env_str("MEDLEDGER_RECORDS_IDENTITY_ID", "", env)
        key_file = env_str("MEDLEDGER_RECORDS_KEY_FILE", "", env)
        if bool(identity_id) != bool(key_file):
            raise SettingsError("set both MEDLEDGER_RECORDS_IDENTITY_ID and MEDLEDGER_RECORDS_KEY_FILE, or neither")
        return cls(
            identity_address=env_str("MEDLEDGER_IDENTITY_ADDRESS", "127.0.0.1:50051", env),
            consent_address=env_str("MEDLEDGER_CONSENT_ADDRESS", "127.0.0.1:50052", env),
            ledger_address=env_str("MEDLEDGER_LEDGER_ADDRESS", "127.0.0.1:50054", env),
            service_identity_id=identity_id,
            service_key=load_private_key(Path(key_file)) if key_file else None,
            key_wrapper=load_key_wrapper(env),
            event_signer=event_signer("records", env),
            events=event_verifier(Topics(env_str("MEDLEDGER_TOPIC_PREFIX", "", env)), env),
            signing_skew_s=env_int("MEDLEDGER_RECORDS_SIGNING_SKEW_S", 300, env),
            sync_wait_s=env_int("MEDLEDGER_RECORDS_SYNC_WAIT_MS", 2000, env) / 1000,
            publish_wait_s=env_float("MEDLEDGER_RECORDS_PUBLISH_WAIT_S", 5.0, env),
            max_export_bytes=env_int("MEDLEDGER_RECORDS_MAX_EXPORT_BYTES", 64 * 1024 * 1024, env),
        )


def load_key_wrapper(env: Mapping[str, str] | None = None) -> KeyWrapper:
    variable = "MEDLEDGER_RECORDS_KEK_FILE"
    path = Path(env_str(variable, env=env))
    return LocalKeyWrapper(keyfiles.parse_data_key(keyfiles.read_file(path, variable), str(path)))
