"""The ledger's own settings, on top of the common ones (see README)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from medledger.ledger.note import NoteSigner
from medledger.runtime.envelope import EnvelopeVerifier
from medledger.runtime.errors import SettingsError
from medledger.runtime.settings import Topics, env_int, env_str, event_verifier


@dataclass(frozen=True)
class LedgerSettings:
    origin: str
    signer: NoteSigner
    checkpoint_interval_s: float
    batch_max_records: int
    standby_poll_s: float
    identity_address: str
    # The pinned producer keys every event must be signed with to be sequenced.
    events: EnvelopeVerifier
    # Threads that check producer signatures beside the sequencing loop
    # (the native batch verifier releases the GIL, so they use the other cores).
    verify_threads: int
    # WatchCheckpoints streams one process serves at once; more are refused.
    max_watchers: int = 100
    # How often watchers of a standby (which signs nothing itself) see new checkpoints.
    watch_poll_s: float = 0.1
    # Level-0 hash tiles (256 entries, 16 KiB with inner nodes) kept in memory
    # for proofs; 8192 (<= 128 MiB) covers 2.1M entries. Upper tiles: all kept.
    leaf_tile_cache: int = 8192

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "LedgerSettings":
        return cls(
            origin=env_str("MEDLEDGER_LEDGER_ORIGIN", "medledger.local/ledger", env),
            signer=load_signer(env),
            checkpoint_interval_s=env_int("MEDLEDGER_LEDGER_CHECKPOINT_INTERVAL_MS", 100, env) / 1000,
            batch_max_records=env_int("MEDLEDGER_LEDGER_BATCH_MAX_RECORDS", 10000, env),
            standby_poll_s=env_int("MEDLEDGER_LEDGER_STANDBY_POLL_MS", 250, env) / 1000,
            identity_address=env_str("MEDLEDGER_IDENTITY_ADDRESS", "127.0.0.1:50051", env),
            events=event_verifier(Topics(env_str("MEDLEDGER_TOPIC_PREFIX", "", env)), env),
            verify_threads=env_int("MEDLEDGER_LEDGER_VERIFY_THREADS", 2, env),
            max_watchers=env_int("MEDLEDGER_LEDGER_MAX_WATCHERS", 100, env),
            watch_poll_s=env_int("MEDLEDGER_LEDGER_WATCH_POLL_MS", 100, env) / 1000,
            leaf_tile_cache=env_int("MEDLEDGER_LEDGER_LEAF_TILE_CACHE", 8192, env),
        )


def load_signer(env: Mapping[str, str] | None = None) -> NoteSigner:
    """The checkpoint signing key, as note signer-key text, from
    MEDLEDGER_LEDGER_SIGNING_KEY (e.g. a Kubernetes Secret) or the file named by
    MEDLEDGER_LEDGER_SIGNING_KEY_FILE. It is never generated silently: a ledger
    whose key changed unnoticed would break every auditor's trust."""
    text = env_str("MEDLEDGER_LEDGER_SIGNING_KEY", "", env)
    if not text:
        path = Path(env_str("MEDLEDGER_LEDGER_SIGNING_KEY_FILE", env=env))
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise SettingsError(
                f"MEDLEDGER_LEDGER_SIGNING_KEY_FILE={path} cannot be read ({exc.strerror}); "
                "create one with `medledger ledger keygen --out PATH`"
            ) from None
    try:
        return NoteSigner.from_signer_key(text)
    except ValueError as exc:
        raise SettingsError(f"the ledger signing key is malformed: {exc}") from None
