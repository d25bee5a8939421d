"""MedLedger's error tree.

Every error says whether retrying can help (``retriable``): consumers retry
retriable errors with backoff and dead-letter the rest. Errors that a caller
caused are CallerErrors; which gRPC status each answers with lives on the gRPC
side (``medledger.runtime.grpc_status``), so this module stays transport-free.
"""

from __future__ import annotations


class MedLedgerError(Exception):
    """Base of every error MedLedger raises on purpose."""

    retriable: bool = False
    # On an error the client library translated from a gRPC status
    # (client/rpc.py): that status (a grpc.StatusCode) and its details.
    code: object
    detail: str


class RetriableError(MedLedgerError):
    """A transient failure: the same operation may succeed later."""

    retriable = True


class DependencyUnavailable(RetriableError):
    """Kafka, PostgreSQL or a peer service cannot be reached right now."""


class SettingsError(MedLedgerError):
    """A required setting is missing or malformed; names the variable."""


class CallerError(MedLedgerError):
    """The caller's request is wrong; retrying it unchanged cannot help."""


class InvalidArgument(CallerError):
    """A request field is missing or malformed."""


class OutOfRange(CallerError):
    """A position or size lies beyond what exists."""


class NotFound(CallerError):
    """The named thing does not exist."""


class AlreadyExists(CallerError):
    """The thing to create exists already."""


class FailedPrecondition(CallerError):
    """The system's state does not allow the operation now."""


class Unauthenticated(CallerError):
    """The caller did not prove who it is."""


class PermissionDenied(CallerError):
    """The caller may not do this."""


class ResourceExhausted(CallerError):
    """The caller asked for more than a limit allows (size, rate, streams)."""
