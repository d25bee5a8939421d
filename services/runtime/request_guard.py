"""What no rpc of any service accepts, checked once for every request before
its handler runs (docs/architecture.md, Decisions: "Malformed input is
INVALID_ARGUMENT everywhere").

* A string containing U+0000: PostgreSQL text cannot hold it, no identifier
  or code contains it, and letting it through turns a caller's mistake into a
  database error (UNKNOWN) deep inside a handler.
* A ``google.protobuf.Timestamp`` outside what protobuf defines (years 1 to
  9999, nanos 0..999,999,999): converting one raises in the handler.

The checks walk only the fields a request has set, so they cost microseconds
on the hot paths. Messages name the field, never its value (it may be PHI).
Transport-free: pure cores may use ``to_datetime`` too.
"""

from __future__ import annotations

from datetime import datetime, timezone

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from medledger.runtime.errors import InvalidArgument

TIMESTAMP = Timestamp.DESCRIPTOR.full_name
MIN_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z
MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
MAX_NANOS = 999_999_999


def check_timestamp(ts: Timestamp, name: str) -> None:
    if not (MIN_SECONDS <= ts.seconds <= MAX_SECONDS and 0 <= ts.nanos <= MAX_NANOS):
        raise InvalidArgument(f"{name} is not a valid timestamp (years 0001 to 9999, nanos 0 to {MAX_NANOS})")


def to_datetime(ts: Timestamp, name: str) -> datetime:
    """The timestamp as an aware UTC datetime; InvalidArgument when out of range."""
    check_timestamp(ts, name)
    return ts.ToDatetime(tzinfo=timezone.utc)


def check_request(message: Message) -> None:
    """Raise InvalidArgument naming the first field no rpc accepts."""
    _check(message, "")


def _check(message: Message, path: str) -> None:
    if message.DESCRIPTOR.full_name == TIMESTAMP:
        check_timestamp(message, path.rstrip(".") or "timestamp")  # type: ignore[arg-type]
        return
    for field, value in message.ListFields():
        name = path + field.name
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            for key, item in value.items():
                _check_scalar(key, name)
                _check_value(entry.fields_by_name["value"], item, f"{name}[]")
        elif field.is_repeated:
            for index, item in enumerate(value):
                _check_value(field, item, f"{name}[{index}]")
        else:
            _check_value(field, value, name)


def _check_value(field: FieldDescriptor, value: object, name: str) -> None:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        _check(value, name + ".")  # type: ignore[arg-type]
    else:
        _check_scalar(value, name)


def _check_scalar(value: object, name: str) -> None:
    if isinstance(value, str) and "\x00" in value:
        raise InvalidArgument(f"{name} must not contain NUL characters")
