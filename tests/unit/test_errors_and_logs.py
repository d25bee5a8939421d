from __future__ import annotations

import json
import logging

import grpc

from medledger.runtime import errors
from medledger.runtime.logs import JsonFormatter


def test_caller_errors_map_to_their_status_and_are_not_retriable() -> None:
    cases = {
        errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
        errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
        errors.NotFound: grpc.StatusCode.NOT_FOUND,
        errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
        errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
        errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    }
    for cls, status in cases.items():
        assert cls("x").status == status
        assert not cls("x").retriable


def test_dependency_errors_are_retriable() -> None:
    assert errors.DependencyUnavailable("kafka down").retriable
    assert errors.DependencyUnavailable("kafka down").status == grpc.StatusCode.UNAVAILABLE


def test_json_log_line_carries_service_and_extra_fields() -> None:
    record = logging.LogRecord("medledger.x", logging.INFO, __file__, 1, "sequenced %d", (5,), None)
    record.index = 42
    line = json.loads(JsonFormatter("ledger").format(record))
    assert line["msg"] == "sequenced 5" and line["service"] == "ledger" and line["index"] == 42
