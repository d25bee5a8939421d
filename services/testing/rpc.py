"""gRPC helpers for tests that call services as clients do."""

from __future__ import annotations

from typing import Callable

import grpc


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    """The status a call ends with, OK included (for tests that tabulate
    outcomes, or race calls and count who won)."""
    try:
        call()
    except grpc.RpcError as failure:
        return failure.code()
    return grpc.StatusCode.OK
