"""Converting between protobuf Timestamps and aware UTC datetimes, for every
pure core (no I/O). Request timestamps out of range are refused earlier, by
runtime/request_guard.py."""

from __future__ import annotations

from datetime import datetime, timezone

from google.protobuf.timestamp_pb2 import Timestamp


def utc(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=timezone.utc)


def timestamp(at: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(at)
    return ts
