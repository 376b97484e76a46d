"""Bearer-token check for every RPC except health probes."""

from __future__ import annotations

import hmac

import grpc

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


def _deny(message: str):
    async def abort(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return abort


MISSING_TOKEN = "missing or invalid bearer token"


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()
        # Made once: the interceptors in front of this one wrap each handler object once.
        self._refusals = {
            (True, True): grpc.stream_stream_rpc_method_handler(_deny_stream(MISSING_TOKEN)),
            (True, False): grpc.stream_unary_rpc_method_handler(_deny(MISSING_TOKEN)),
            (False, True): grpc.unary_stream_rpc_method_handler(_deny_stream(MISSING_TOKEN)),
            (False, False): grpc.unary_unary_rpc_method_handler(_deny(MISSING_TOKEN)),
        }

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(EXEMPT_PREFIXES):
            return await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = str(metadata.get("authorization", "")).encode()
        if hmac.compare_digest(given, self._expected):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return self._refusals[(handler.request_streaming, handler.response_streaming)]


def _deny_stream(message: str):
    async def abort(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    return abort
