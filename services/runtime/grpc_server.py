"""The grpc.aio server bootstrap every service uses.

It always serves ``grpc.health.v1.Health`` and server reflection, and maps
MedLedger's caller errors to their gRPC status codes so no handler answers
INTERNAL for a caller's mistake.
"""

from __future__ import annotations

import logging
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from medledger.runtime.errors import InvalidArgument, MedLedgerError
from medledger.runtime.grpc_status import status_of
from medledger.runtime.request_guard import check_request
from medledger.runtime.metrics import grpc_interceptors

log = logging.getLogger(__name__)

Registration = Callable[[grpc.aio.Server], None]


async def _abort_with(context: grpc.aio.ServicerContext, error: MedLedgerError) -> None:
    status = status_of(error)
    if status == grpc.StatusCode.INTERNAL:
        log.exception("internal error in handler")
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")
    await context.abort(status, str(error))


class MalformedRequest:
    """Stands in for a request whose bytes did not parse as the rpc's message.
    gRPC answers INTERNAL when a deserializer raises; this lets the request
    reach the handler wrapper, which answers INVALID_ARGUMENT instead."""

    def __init__(self, error: Exception) -> None:
        self.error = type(error).__name__


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """The deserializer, returning MalformedRequest instead of raising."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:  # noqa: BLE001 - any parse failure is the caller's malformed bytes
            return MalformedRequest(error)

    return parse


def wrap_handler(
    handler: grpc.RpcMethodHandler,
    before: Callable[[Any, grpc.aio.ServicerContext], Awaitable[None]],
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """A handler that runs ``before`` (in the handler's own task, so context
    variables it sets are visible to the handler) and maps MedLedgerErrors
    raised by either to their status codes. ``request_deserializer`` replaces
    the handler's own when given."""
    deserialize = request_deserializer or handler.request_deserializer
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                await before(request, context)
                return await inner_uu(request, context)
            except MedLedgerError as error:
                await _abort_with(context, error)

        return grpc.unary_unary_rpc_method_handler(unary_unary, deserialize, handler.response_serializer)
    if handler.unary_stream:
        inner_us = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                await before(request, context)
                async for item in inner_us(request, context):
                    yield item
            except MedLedgerError as error:
                await _abort_with(context, error)

        return grpc.unary_stream_rpc_method_handler(unary_stream, deserialize, handler.response_serializer)
    return handler


async def _checked(request: Any, context: grpc.aio.ServicerContext) -> None:
    """What no rpc accepts: unparseable bytes, NUL in strings, impossible timestamps."""
    if isinstance(request, MalformedRequest):
        raise InvalidArgument(f"the request is not a valid message for this rpc ({request.error})")
    if isinstance(request, Message):
        check_request(request)


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Turns a raised MedLedgerError into its status code and message, and
    refuses malformed requests with INVALID_ARGUMENT before any handler
    (runtime/request_guard.py)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return wrap_handler(handler, _checked, tolerant(handler.request_deserializer))


class GrpcServer:
    """A grpc.aio server with health and reflection, NOT_SERVING until told otherwise."""

    def __init__(
        self,
        host: str,
        port: int,
        service_names: Sequence[str],
        registrations: Sequence[Registration],
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        credentials: grpc.ServerCredentials | None = None,
        options: Sequence[tuple[str, int]] = (),
    ) -> None:
        """options: channel arguments on top of the defaults, e.g. a larger
        grpc.max_receive_message_length for a service with its own size limit."""
        self.address = f"{host}:{port}"
        self.service_names = list(service_names)
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server(
            # Metrics outermost, so they see every status, authentication failures included.
            interceptors=[*grpc_interceptors(), *interceptors, ErrorMappingInterceptor()],
            options=list({"grpc.max_send_message_length": 8 * 1024 * 1024, "grpc.so_reuseport": 0, **dict(options)}.items()),
        )
        for register in registrations:
            register(self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [*self.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self.server,
        )
        self.port = (
            self.server.add_secure_port(self.address, credentials)
            if credentials is not None
            else self.server.add_insecure_port(self.address)
        )
        self.tls = credentials is not None
        if self.port == 0:
            raise OSError(f"cannot listen on {self.address}: port in use or not allowed")

    async def start(self) -> None:
        await self.set_serving(False)
        await self.server.start()
        log.info("gRPC listening", extra={"address": f"{self.address.rsplit(':', 1)[0]}:{self.port}"})

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def stop(self, grace: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


def full_service_name(descriptor_module: Any, service: str) -> str:
    """'medledger.v1.LedgerService' from a generated *_pb2 module and a short name."""
    return str(descriptor_module.DESCRIPTOR.services_by_name[service].full_name)
