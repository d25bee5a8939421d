"""Which gRPC status code each MedLedger error answers with, and back.

The error tree (``medledger.runtime.errors``) is transport-free; this is the
gRPC side of it. The server maps a raised error to its status so adapters
never answer INTERNAL for a caller's mistake; clients map a status they
receive back to the matching error.
"""

from __future__ import annotations

import grpc

from medledger.runtime import errors

# Most specific class first in an error's MRO wins; anything unlisted is INTERNAL.
_STATUS_OF: dict[type[errors.MedLedgerError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.CallerError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.RetriableError: grpc.StatusCode.UNAVAILABLE,
}

# A caller's status received from a peer, as the error to raise locally.
_ERROR_OF: dict[grpc.StatusCode, type[errors.MedLedgerError]] = {
    status: cls for cls, status in _STATUS_OF.items() if issubclass(cls, errors.CallerError) and cls is not errors.CallerError
}


def status_of(error: errors.MedLedgerError) -> grpc.StatusCode:
    """The status a handler answers with when it raises ``error``."""
    for cls in type(error).__mro__:
        status = _STATUS_OF.get(cls)
        if status is not None:
            return status
    return grpc.StatusCode.INTERNAL


def error_for(status: grpc.StatusCode) -> type[errors.MedLedgerError]:
    """The error for a peer's status: the caller error it names, else
    DependencyUnavailable (the peer failed, retrying may help)."""
    return _ERROR_OF.get(status, errors.DependencyUnavailable)
