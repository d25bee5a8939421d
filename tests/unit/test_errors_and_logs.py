from __future__ import annotations

import json
import logging
import re

import grpc

from medledger.runtime import errors
from medledger.runtime.grpc_status import error_for, status_of
from medledger.runtime.logs import JsonFormatter


def test_caller_errors_map_to_the_status_of_their_name_and_back_and_are_not_retriable() -> None:
    """InvalidArgument <-> INVALID_ARGUMENT, ... for every caller error there is."""
    kinds = errors.CallerError.__subclasses__()
    assert len(kinds) == 8
    for cls in kinds:
        status = grpc.StatusCode[re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).upper()]
        assert status_of(cls("x")) == status
        assert not cls("x").retriable
        assert error_for(status) is cls
    assert status_of(errors.CallerError("x")) == grpc.StatusCode.INVALID_ARGUMENT


def test_other_errors_are_internal_and_unknown_peer_statuses_unavailable() -> None:
    assert status_of(errors.SettingsError("x")) == grpc.StatusCode.INTERNAL
    assert status_of(errors.MedLedgerError("x")) == grpc.StatusCode.INTERNAL
    assert error_for(grpc.StatusCode.UNAVAILABLE) is errors.DependencyUnavailable
    assert error_for(grpc.StatusCode.INTERNAL) is errors.DependencyUnavailable


def test_dependency_errors_are_retriable() -> None:
    assert errors.DependencyUnavailable("kafka down").retriable
    assert status_of(errors.DependencyUnavailable("kafka down")) == grpc.StatusCode.UNAVAILABLE


def test_json_log_line_carries_service_and_extra_fields() -> None:
    record = logging.LogRecord("medledger.x", logging.INFO, __file__, 1, "sequenced %d", (5,), None)
    record.index = 42
    line = json.loads(JsonFormatter("ledger").format(record))
    assert line["msg"] == "sequenced 5" and line["service"] == "ledger" and line["index"] == 42
