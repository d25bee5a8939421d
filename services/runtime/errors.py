"""MedLedger's error tree.

Every error says whether retrying can help (``retriable``): consumers retry
retriable errors with backoff and dead-letter the rest. Errors that a caller
caused carry the gRPC status they map to, so adapters never answer INTERNAL
for a caller's mistake.
"""

from __future__ import annotations

import grpc


class MedLedgerError(Exception):
    """Base of every error MedLedger raises on purpose."""

    retriable: bool = False
    status: grpc.StatusCode = grpc.StatusCode.INTERNAL


class RetriableError(MedLedgerError):
    """A transient failure: the same operation may succeed later."""

    retriable = True
    status = grpc.StatusCode.UNAVAILABLE


class DependencyUnavailable(RetriableError):
    """Kafka, PostgreSQL or a peer service cannot be reached right now."""


class SettingsError(MedLedgerError):
    """A required setting is missing or malformed; names the variable."""


class CallerError(MedLedgerError):
    """The caller's request is wrong; retrying it unchanged cannot help."""

    status = grpc.StatusCode.INVALID_ARGUMENT


class InvalidArgument(CallerError):
    status = grpc.StatusCode.INVALID_ARGUMENT


class OutOfRange(CallerError):
    status = grpc.StatusCode.OUT_OF_RANGE


class NotFound(CallerError):
    status = grpc.StatusCode.NOT_FOUND


class AlreadyExists(CallerError):
    status = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(CallerError):
    status = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(CallerError):
    status = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(CallerError):
    status = grpc.StatusCode.PERMISSION_DENIED
