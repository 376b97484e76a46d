"""Admission control: at most `limit` RPCs in flight; the rest are refused at once.

An overloaded front end that queues every call turns overload into timeouts for everyone. This
interceptor refuses a call beyond the limit before any work, with RESOURCE_EXHAUSTED, which the
caller can act on (back off, go elsewhere). Health probes are never counted or refused, so an
orchestrator does not restart a front end for being busy. (gRPC's own `maximum_concurrent_rpcs`
would refuse probes too.)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import grpc

from bertrec.server.observability import _KINDS, WrappedHandlers

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class AdmissionInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, limit: int):
        self.limit = limit
        self.in_flight = 0
        self.refused = 0
        self._wrapped = WrappedHandlers()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(EXEMPT_PREFIXES):
            return handler
        return self._wrapped.get(handler, handler_call_details.method, self._wrap)

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        attribute, _, factory = _KINDS[(handler.request_streaming, handler.response_streaming)]
        behavior = getattr(handler, attribute)
        wrap = self._wrap_generator if inspect.isasyncgenfunction(behavior) else self._wrap_coroutine
        return factory(
            wrap(behavior),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _admit(self) -> bool:
        # The event loop runs one callback at a time: check and increment cannot interleave.
        if self.in_flight >= self.limit:
            self.refused += 1
            return False
        self.in_flight += 1
        return True

    async def _refuse(self, context: grpc.aio.ServicerContext) -> None:
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"server busy: {self.in_flight} calls in flight (limit {self.limit}); retry later",
        )

    def _wrap_coroutine(self, behavior: Callable) -> Callable:
        async def admitted(request_or_iterator, context):
            if not self._admit():
                await self._refuse(context)
            try:
                return await behavior(request_or_iterator, context)
            finally:
                self.in_flight -= 1

        return admitted

    def _wrap_generator(self, behavior: Callable) -> Callable:
        async def admitted(request_or_iterator, context):
            if not self._admit():
                await self._refuse(context)
            try:
                async for response in behavior(request_or_iterator, context):
                    yield response
            finally:
                self.in_flight -= 1

        return admitted
