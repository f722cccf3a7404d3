"""The store's gRPC method handlers, built from the service descriptor like the generated
`add_UnsubscribeStoreServicer_to_server`, with one difference: a request whose bytes are not
the method's message is answered INVALID_ARGUMENT (the caller's fault) instead of the
UNKNOWN/INTERNAL grpc gives a failed deserialisation (a server fault, which clients retry
and alerts count). The detail names the expected message, never the bytes."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass

from mailwarden.unsubscribe.v1 import unsubscribe_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["UnsubscribeStore"]


class _Malformed:
    """Stands in for a request that did not parse, until the handler can refuse it."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name


def _lenient_parser(message_class: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError:
            return _Malformed(message_class.DESCRIPTOR.name)
    return parse


async def _refuse(context: grpc.aio.ServicerContext, bad: _Malformed) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                        f"request is not a valid {bad.type_name} (malformed protobuf)")


async def _checked(requests: AsyncIterator[Any],
                   context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, _Malformed):
            await _refuse(context, request)
        yield request


def _unary_request(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behaviour):
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if isinstance(request, _Malformed):
                await _refuse(context, request)
            async for response in behaviour(request, context):
                yield response
        return stream

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Malformed):
            await _refuse(context, request)
        return await behaviour(request, context)
    return call


def _streamed_request(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    async def call(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        return await behaviour(_checked(requests, context), context)
    return call


def add_servicer(servicer: Any, server: grpc.aio.Server) -> None:
    """Register `servicer`'s methods of UnsubscribeStore on `server`."""
    handlers = {}
    for method in SERVICE.methods:
        parse = _lenient_parser(GetMessageClass(method.input_type))
        serialise = GetMessageClass(method.output_type).SerializeToString
        behaviour = getattr(servicer, method.name)
        if method.client_streaming:
            if method.server_streaming:
                raise NotImplementedError(f"{method.name}: bidirectional streams")
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(
                _streamed_request(behaviour), request_deserializer=parse,
                response_serializer=serialise)
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _unary_request(behaviour), request_deserializer=parse,
                response_serializer=serialise)
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary_request(behaviour), request_deserializer=parse,
                response_serializer=serialise)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
