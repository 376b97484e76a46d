"""Service registration from the proto descriptors, with request parsing that cannot crash a call.

The generated `add_*_to_server` helpers parse requests with `FromString`; a message that fails to
parse (invalid UTF-8 in a string field, truncated bytes) then becomes an INTERNAL error before our
code runs. Here a failed parse becomes an `UndecodableRequest` that the handlers turn into
INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from bertrec.errors import InvalidRequest
from bertrec.v1 import recommender_pb2 as pb


class UndecodableRequest:
    def __init__(self, reason: str):
        self.reason = reason


def _parser(message_cls):
    def parse(data: bytes):
        try:
            return message_cls.FromString(data)
        except DecodeError as exc:
            return UndecodableRequest(str(exc))

    return parse


def decoded(message: Any) -> Any:
    if isinstance(message, UndecodableRequest):
        raise InvalidRequest(f"request could not be parsed (invalid protobuf or invalid UTF-8): {message.reason}")
    return message


async def decoded_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for message in requests:
        yield decoded(message)


_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def generic_handler(service_name: str, servicer: object) -> grpc.GenericRpcHandler:
    service = pb.DESCRIPTOR.services_by_name[service_name]
    handlers = {}
    for method in service.methods:
        factory = _FACTORIES[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = factory(
            getattr(servicer, method.name),
            request_deserializer=_parser(getattr(pb, method.input_type.name)),
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
