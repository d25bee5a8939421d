"""Exit codes of ``medledger audit`` (documented in the README's auditor
section and in each command's --help)."""

from __future__ import annotations

from enum import IntEnum

from medledger.runtime.errors import CallerError, PermissionDenied, SettingsError, Unauthenticated


class Exit(IntEnum):
    OK = 0
    """Everything checked verified (verify, verify-proof), the projections
    were reproduced (replay), the report was written (disclosures, prove)."""
    FAILED = 1
    """Tampering or inconsistency found, a projection diverges, a proof does not verify."""
    USAGE = 2
    """Wrong options: a missing pinned key, an unreadable key, state or index file, an unknown event id."""
    UNREACHABLE = 3
    """The ledger, Kafka, PostgreSQL or a topic is unavailable, or the ledger failed a request."""
    REFUSED = 4
    """No token, an expired one, or one without the AUDITOR role."""


HELP = (
    "Exit codes: 0 verified; 1 tampering, divergence or invalid proof found; 2 usage "
    "(missing or unreadable key, state or index file, unknown event id); 3 ledger, Kafka, PostgreSQL or topic "
    "unreachable; 4 token missing, expired or not an auditor's."
)


def exit_for(exc: BaseException) -> Exit:
    """The exit code for an error that stopped a command."""
    if isinstance(exc, (Unauthenticated, PermissionDenied)):
        return Exit.REFUSED
    if isinstance(exc, (SettingsError, CallerError)):
        return Exit.USAGE  # e.g. prove --event-id of an event the ledger never sequenced
    return Exit.UNREACHABLE  # DependencyUnavailable, or the ledger failed a request
