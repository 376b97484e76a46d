"""Exceptions -> gRPC status, one decorator for unary and streaming handlers alike."""

from __future__ import annotations

import functools
import inspect
import logging

import grpc

from bertrec.errors import BertrecError
from bertrec.server.observability import current_request_id

logger = logging.getLogger(__name__)

GENERIC_INTERNAL = "internal error; the server logged the details"


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    if isinstance(exc, BertrecError):
        await context.abort(exc.code, str(exc))
    logger.exception("unhandled error in %s (request %s)", method, current_request_id(), exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, GENERIC_INTERNAL)


def _passes_through(exc: BaseException) -> bool:
    # context.abort raises AbortError; cancellation must propagate untouched.
    import asyncio

    return isinstance(exc, (asyncio.CancelledError, grpc.aio.AbortError))


def grpc_errors(handler):
    """Map bertrec errors to their status codes; anything else is INTERNAL with a generic message."""
    name = handler.__qualname__
    if inspect.isasyncgenfunction(handler):

        @functools.wraps(handler)
        async def stream_wrapper(self, request, context):
            try:
                async for response in handler(self, request, context):
                    yield response
            except BaseException as exc:
                if _passes_through(exc):
                    raise
                await _abort(context, exc, name)

        return stream_wrapper

    @functools.wraps(handler)
    async def unary_wrapper(self, request, context):
        try:
            return await handler(self, request, context)
        except BaseException as exc:
            if _passes_through(exc):
                raise
            await _abort(context, exc, name)

    return unary_wrapper
