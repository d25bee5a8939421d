"""Every rpc of every service, fed malformed, oversized and boundary values
over the real running servers (issue #9, item 3): each answer is a status the
rpc documents (its comment in the proto, or one every rpc may answer, see
UNIVERSAL), never UNKNOWN or INTERNAL, and every service keeps serving.

The rpcs come from the descriptors of every medledger.v1 proto, so an rpc
added later is fuzzed without touching this file. Hypothesis draws the
requests field by field from each request message's descriptor, with the
caller drawn from every role's token, none, or a forged one. The run is
derandomized (the same examples each time, so CI is stable);
MEDLEDGER_FUZZ_EXAMPLES raises the examples per rpc for a deeper local run.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message_factory, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from medledger.runtime.request_guard import MAX_SECONDS, MIN_SECONDS
from medledger.testing.network import Network, all_processes, call_raw, medledger_methods
from medledger.testing.network import network  # noqa: F401 - the fixture
from medledger.testing.stack import ROOT, health_status
from medledger.v1 import identity_pb2, identity_pb2_grpc, ledger_pb2, ledger_pb2_grpc

EXAMPLES = int(os.environ.get("MEDLEDGER_FUZZ_EXAMPLES", "25"))
CALL_TIMEOUT_S = 30
# What any rpc may answer, whatever its comment says (docs/architecture.md,
# Security model): a malformed request, no or a bad token, a caller kind the
# README's authorization matrix refuses, a request over gRPC's 4 MiB limit.
UNIVERSAL = frozenset({"OK", "INVALID_ARGUMENT", "UNAUTHENTICATED", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED"})
STATUS_NAMES = frozenset(code.name for code in grpc.StatusCode)
NEVER = frozenset({"UNKNOWN", "INTERNAL"})
# Bytes that are no valid request of any rpc whose fields 1 and 2 are strings
# or messages (for others some are unknown fields, which parse).
GARBAGE = [
    b"\xff",  # a field key with no end
    b"\x08\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # an over-long varint
    b"\x0a\x05ab",  # a length beyond the message
    b"\x0a\x02\xc3\x28\x12\x02\xc3\x28",  # invalid UTF-8 where strings are
    b"\x0b\x10\x01",  # a group start with no end
]
TIMESTAMP = "google.protobuf.Timestamp"


def documented_statuses() -> dict[str, frozenset[str]]:
    """'/medledger.v1.Service/Rpc' -> the status names its proto comment
    names, with those of rpcs it refers to ("same statuses as GetConsent")."""
    named: dict[str, set[str]] = {}
    mentions: dict[str, set[str]] = {}
    for proto in sorted((ROOT / "protos" / "medledger" / "v1").glob("*.proto")):
        service, comment = "", []
        for line in (raw.strip() for raw in proto.read_text().splitlines()):
            if match := re.match(r"service (\w+)", line):
                service = match.group(1)
            if line.startswith("//"):
                comment.append(line[2:])
                continue
            if match := re.match(r"rpc (\w+)\(", line):
                path = f"/medledger.v1.{service}/{match.group(1)}"
                text = " ".join(comment)
                named[path] = set(re.findall(r"\b[A-Z_]{2,}\b", text)) & STATUS_NAMES
                mentions[path] = {f"/medledger.v1.{service}/{word}" for word in re.findall(r"\b[A-Z]\w+\b", text)}
            comment = []
    return {
        path: frozenset(statuses.union(*(named.get(other, set()) for other in mentions[path] if other != path)))
        for path, statuses in named.items()
    }


# ---- requests drawn from a message descriptor -----------------------------------------

BOUNDARY_TEXT = [
    "", " ", "\x00", "id\x00", "\x00" * 8, "x" * 257, "é" * 300, "x" * 70_000, "../../etc/passwd", "' OR 1=1 --",
    "%s%n%x", "\u202e\u200b\ufeff", "🩺" * 50, "0190c1e2-0000-7000-8000-000000000000", "Observation", "Patient/1",
    "TREATMENT", "HOSPITAL", "OPERATOR", "IAL2", "-1", "9" * 40, "null", "{}", "[]",
]
BOUNDARY_BYTES = [b"", bytes(31), bytes(32), b"\xff" * 32, bytes(33), bytes(64), b"\x01" * 300_000]
INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1), FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1), FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1), FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
SECONDS = [MIN_SECONDS - 1, MIN_SECONDS, -1, 0, 1_767_225_600, MAX_SECONDS, MAX_SECONDS + 1, 2**63 - 1, -(2**63)]
NANOS = [0, 1, 999_999_999, 1_000_000_000, -1, 2**31 - 1]


def boundary_ints(low: int, high: int) -> st.SearchStrategy[int]:
    edges = [v for v in (low, low + 1, -1, 0, 1, 2, 100, 1000, 100_000, high - 1, high) if low <= v <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


PLAUSIBLE_TEXT = ["Observation", "Patient", "TREATMENT", "physician", "HOSPITAL", "IAL2", "KEY_COMPROMISE", "sha256"]


@dataclass
class Drawer:
    """Draws one request: each field set or not. A hostile request gets
    malformed, oversized and boundary values; a plausible one (half of them)
    well-formed values and the parties' real ids and keys, so it passes the
    shared guard and reaches each handler's own rules."""

    data: st.DataObject
    known_ids: list[str]
    known_keys: list[bytes]
    hostile: bool = True

    def message(self, descriptor: Descriptor, depth: int = 0) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if descriptor.full_name == TIMESTAMP:
            if not self.hostile:
                return {"seconds": self.data.draw(st.integers(1_600_000_000, 1_900_000_000))}
            return {"seconds": self.data.draw(st.sampled_from(SECONDS)), "nanos": self.data.draw(st.sampled_from(NANOS))}
        for field in descriptor.fields:
            if not self.data.draw(st.booleans()):
                continue
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                entry = field.message_type
                count = self.data.draw(st.integers(0, 3))
                values[field.name] = {self.single(entry.fields_by_name["key"], depth): self.single(entry.fields_by_name["value"], depth) for _ in range(count)}
            elif field.is_repeated:
                count = self.data.draw(st.sampled_from([0, 1, 2, 3, 2000] if self.hostile else [0, 1, 2]))
                if count > 3:  # oversized: many copies of one value
                    values[field.name] = [self.single(field, depth)] * count
                else:
                    values[field.name] = [self.single(field, depth) for _ in range(count)]
            else:
                values[field.name] = self.single(field, depth)
        return values

    def single(self, field: FieldDescriptor, depth: int) -> Any:
        draw, kind = self.data.draw, field.type
        if field.message_type is not None:
            return self.message(field.message_type, depth + 1) if depth < 3 else {}
        declared = [v.number for v in field.enum_type.values] if field.enum_type is not None else []
        if kind == FieldDescriptor.TYPE_STRING and not self.hostile:
            return draw(st.one_of(st.sampled_from(self.known_ids), st.sampled_from(PLAUSIBLE_TEXT)))
        if kind == FieldDescriptor.TYPE_BYTES and not self.hostile:
            return draw(st.one_of(st.sampled_from(self.known_keys), st.binary(min_size=32, max_size=32)))
        if kind == FieldDescriptor.TYPE_ENUM and not self.hostile:
            return draw(st.sampled_from(declared))
        if kind in INT_RANGES and not self.hostile:
            return draw(st.integers(0, 20))
        if kind == FieldDescriptor.TYPE_STRING:
            return draw(st.one_of(st.sampled_from(BOUNDARY_TEXT), st.sampled_from(self.known_ids), st.text(max_size=40)))
        if kind == FieldDescriptor.TYPE_BYTES:
            return draw(st.one_of(st.sampled_from(BOUNDARY_BYTES), st.sampled_from(self.known_keys), st.binary(max_size=80)))
        if kind == FieldDescriptor.TYPE_BOOL:
            return draw(st.booleans())
        if kind == FieldDescriptor.TYPE_ENUM:
            return draw(st.sampled_from(sorted({*declared, -1, 99, 2**31 - 1})))
        if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            return draw(st.sampled_from([0.0, -1.0, 1e308, math.inf, -math.inf, math.nan]))
        return draw(boundary_ints(*INT_RANGES[kind]))


def build(message_class: type[Message], values: dict[str, Any]) -> Message:
    message = message_class()
    fill(message, values)
    return message


def fill(message: Message, values: dict[str, Any]) -> None:
    for name, value in values.items():
        field = message.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                if value_field.message_type is not None:
                    fill(target[key], item)
                else:
                    target[key] = item
        elif field.is_repeated:
            for item in value:
                if field.message_type is not None:
                    fill(target.add(), item)
                else:
                    target.append(item)
        elif field.message_type is not None:
            target.SetInParent()
            fill(target, value)
        else:
            setattr(message, name, value)


def shown(request: Message) -> str:
    text = text_format.MessageToString(request, as_one_line=True, as_utf8=False)
    return text if len(text) < 400 else text[:400] + f"... ({len(text)} chars)"


# ---- calls ----------------------------------------------------------------------------

def status_of_call(network: Network, method: MethodDescriptor, payload: bytes, metadata: tuple[tuple[str, str], ...]) -> tuple[str, str]:
    code, details = call_raw(network, method, payload, metadata, CALL_TIMEOUT_S)
    return code.name, details


def admits(network: Network, method: MethodDescriptor, metadata: tuple[tuple[str, str], ...]) -> bool:
    """Whether a caller gets past the token checks of this rpc (an empty request)."""
    status, details = status_of_call(network, method, b"", metadata)
    return status != "UNAUTHENTICATED" and not (status == "PERMISSION_DENIED" and "may not call" in details)


def callers(network: Network) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    forged = network.parties["PATIENT"].token.rsplit(".", 1)[0] + ".c2lnbmF0dXJl"
    return [
        ("no token", ()),
        ("forged token", (("authorization", f"Bearer {forged}"),)),
        ("operator", network.identity.operator.metadata),
        *((role, party.metadata) for role, party in network.parties.items()),
    ]


def test_every_rpc_answers_bad_input_with_documented_statuses_and_keeps_serving(network: Network) -> None:
    documented = documented_statuses()
    who = callers(network)
    parties = [network.identity.operator, *network.parties.values()]
    known_ids = [p.identity_id for p in parties]
    known_keys = [p.public_key for p in parties]
    failures: list[str] = []
    methods = medledger_methods()
    assert len(methods) >= 30, "the protos' rpcs were not found"
    print(f"fuzzing {len(methods)} rpcs, {EXAMPLES} derandomized examples each (MEDLEDGER_FUZZ_EXAMPLES)")

    seen: dict[str, dict[str, int]] = {}  # rpc -> status -> answers, printed for a look at the coverage
    for method in methods:
        path = f"/{method.containing_service.full_name}/{method.name}"
        seen[path] = {}
        try:
            network.channel(method.containing_service.full_name)
        except AssertionError as exc:
            failures.append(str(exc))
            continue
        allowed = UNIVERSAL | documented.get(path, frozenset())
        request_class = message_factory.GetMessageClass(method.input_type)
        admitted = [(role, metadata) for role, metadata in who if admits(network, method, metadata)]

        def judge(status: str, details: str, caller: str, what: str) -> None:
            seen[path][status] = seen[path].get(status, 0) + 1
            if status in NEVER or status not in allowed:
                failures.append(f"{path} as {caller}: {status} ({details!r}) for {what}; documented: {sorted(allowed)}")

        for payload in GARBAGE:
            status, details = status_of_call(network, method, payload, network.parties["SERVICE"].metadata)
            judge(status, details, "SERVICE", f"the bytes {payload!r}")

        @settings(
            max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
            phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
        )
        @given(st.data())
        def fuzz(data: st.DataObject) -> None:
            # mostly callers the rpc admits, so requests reach the handler
            prefer_admitted: int = data.draw(st.integers(0, 4))
            among = admitted if admitted and prefer_admitted else who
            caller, metadata = data.draw(st.sampled_from(among))
            values = Drawer(data, known_ids, known_keys, hostile=data.draw(st.booleans())).message(method.input_type)
            try:
                request = build(request_class, values)
                payload = request.SerializeToString()
            except (ValueError, TypeError):  # a value protobuf itself refuses to send (e.g. NaN is fine, bad enum width is not)
                return
            status, details = status_of_call(network, method, payload, metadata)
            judge(status, details, caller, shown(request))

        fuzz()

    for path, statuses in seen.items():
        print(path, dict(sorted(statuses.items())))
    for process in all_processes(network):
        assert process.proc is not None and process.proc.poll() is None, f"{process.name} died:\n{process.log_tail()}"
        assert health_status(process.address) == "SERVING", f"{process.name} stopped serving:\n{process.log_tail()}"
    # and good requests still get good answers
    identity = network.stub(identity_pb2_grpc.IdentityServiceStub, "medledger.v1.IdentityService")
    assert identity.GetTokenVerificationKey(identity_pb2.GetTokenVerificationKeyRequest(), timeout=10).keys
    ledger = network.stub(ledger_pb2_grpc.LedgerServiceStub, "medledger.v1.LedgerService")
    assert ledger.GetVerifierKey(ledger_pb2.GetVerifierKeyRequest(), timeout=10).verifier_key
    assert not failures, f"{len(failures)} undocumented answers:\n" + "\n".join(failures[:60])
