"""The shared request guard (runtime/request_guard.py, runtime/grpc_server.py):
what no rpc accepts is INVALID_ARGUMENT before any handler runs, wherever in
the request it hides. The fuzz test (tests/integration/test_fuzz_rpcs.py)
checks the same over the running services."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from medledger.runtime.errors import InvalidArgument
from medledger.runtime.grpc_server import MalformedRequest, tolerant
from medledger.runtime.request_guard import MAX_SECONDS, MIN_SECONDS, check_request, to_datetime
from medledger.v1 import consent_pb2, identity_pb2


def test_nul_anywhere_in_a_request_is_refused_naming_the_field_not_the_value() -> None:
    top = identity_pb2.GetIdentityRequest(identity_id="abc\x00def")
    with pytest.raises(InvalidArgument, match="identity_id must not contain NUL") as refused:
        check_request(top)
    assert "abc" not in str(refused.value)
    nested = consent_pb2.ConsentTerms()
    nested.scope.categories.extend(["Observation", "Cond\x00ition"])
    with pytest.raises(InvalidArgument, match=r"^scope\.categories\[1\] must not"):
        check_request(nested)
    in_a_map = Struct()
    in_a_map.update({"ke\x00y": "value"})
    with pytest.raises(InvalidArgument):
        check_request(in_a_map)
    check_request(consent_pb2.GrantConsentRequest(signature=b"\x00" * 64))  # bytes may hold anything


@pytest.mark.parametrize("seconds, nanos", [
    (MIN_SECONDS - 1, 0), (MAX_SECONDS + 1, 0), (2**63 - 1, 0), (-(2**63), 0), (0, -1), (0, 1_000_000_000),
])
def test_timestamps_outside_protobufs_range_are_invalid_arguments(seconds: int, nanos: int) -> None:
    request = identity_pb2.ResolveKeyRequest(identity_id="x")
    request.at_time.seconds, request.at_time.nanos = seconds, nanos
    with pytest.raises(InvalidArgument, match="at_time is not a valid timestamp"):
        check_request(request)
    with pytest.raises(InvalidArgument):
        to_datetime(request.at_time, "at_time")


def test_the_range_ends_are_accepted() -> None:
    assert to_datetime(Timestamp(seconds=MIN_SECONDS), "t") == datetime(1, 1, 1, tzinfo=timezone.utc)
    assert to_datetime(Timestamp(seconds=MAX_SECONDS, nanos=999_999_999), "t").year == 9999
    request = identity_pb2.ResolveKeyRequest(identity_id="x")
    request.at_time.seconds = MAX_SECONDS
    check_request(request)


def test_unparseable_bytes_become_a_malformed_request_not_an_exception() -> None:
    parse = tolerant(identity_pb2.GetIdentityRequest.FromString)
    assert parse is not None
    assert isinstance(parse(b"\x0a\x05ab"), MalformedRequest)
    assert isinstance(parse(b"\x0a\x02\xc3\x28"), MalformedRequest)  # invalid UTF-8 in a string
    assert parse(b"\x0a\x01a") == identity_pb2.GetIdentityRequest(identity_id="a")
