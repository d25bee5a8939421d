"""One place where a gRPC failure becomes a MedLedger error.

A hospital system should not have to know gRPC status codes to tell "not
allowed" from "try again": every call through ``medledger.client`` raises the
error of ``medledger.runtime.errors`` that the status names (PermissionDenied,
NotFound, InvalidArgument, ...), or DependencyUnavailable when the service
could not be reached or failed (retrying may help). The raised error keeps
the status (``status_code(error)``) and the service's detail for logs.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import grpc

from medledger.runtime import errors
from medledger.runtime.grpc_status import error_for

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 15.0


def translate(what: str, exc: grpc.RpcError) -> errors.MedLedgerError:
    """The MedLedger error for a failed call, its message naming the rpc."""
    code_of, details_of = getattr(exc, "code", None), getattr(exc, "details", None)
    code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    detail = details_of() if callable(details_of) else str(exc)
    error = error_for(code)(f"{what}: {code.name}: {detail}")
    error.code = code
    error.detail = detail
    return error


def status_code(error: BaseException) -> grpc.StatusCode | None:
    """The gRPC status a client error came from (None for other exceptions)."""
    code = getattr(error, "code", None)
    return code if isinstance(code, grpc.StatusCode) else None


def call(what: str, invoke: Callable[[], T]) -> T:
    """Run one rpc; a gRPC failure is raised as the matching MedLedger error."""
    try:
        return invoke()
    except grpc.RpcError as exc:
        raise translate(what, exc) from None
