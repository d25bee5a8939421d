"""Protocol-buffer enum numbers read from the wire. Pure.

A proto3 enum field can carry any number, including ones the schema does not
define, so a number is named only through the enum's own table."""

from __future__ import annotations

from typing import Protocol

from google.protobuf.descriptor import EnumDescriptor


class ProtoEnum(Protocol):
    """A generated enum (``consent_pb2.Purpose``): what names its numbers."""

    @property
    def DESCRIPTOR(self) -> EnumDescriptor: ...


def enum_name(enum: ProtoEnum, number: int, unknown: str = "") -> str:
    """The name ``enum`` gives ``number``; ``unknown`` for a number it does not define."""
    value = enum.DESCRIPTOR.values_by_number.get(number)
    return value.name if value is not None else unknown
