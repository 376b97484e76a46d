"""One decorator maps bertrec errors to status codes for unary and streaming handlers."""

import asyncio
import logging

import grpc
import pytest

from bertrec import errors
from bertrec.server.errors import GENERIC_INTERNAL, grpc_errors


class RecordingContext:
    """Stands in for grpc.aio.ServicerContext.abort, which records and raises AbortError."""

    def __init__(self):
        self.code = None
        self.details = None

    async def abort(self, code, details):
        self.code, self.details = code, details
        raise grpc.aio.AbortError()


class Handlers:
    def __init__(self, exc):
        self.exc = exc

    @grpc_errors
    async def unary(self, request, context):
        raise self.exc

    @grpc_errors
    async def stream(self, request, context):
        yield "first"
        raise self.exc


CASES = [
    (errors.InvalidRequest("k must be positive"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound("unknown user"), grpc.StatusCode.NOT_FOUND),
    (errors.Overloaded("queue full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceeded("late"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.NotReady("loading"), grpc.StatusCode.UNAVAILABLE),
    (errors.WorkerLost("replica died"), grpc.StatusCode.UNAVAILABLE),
    (errors.Unauthenticated("no token"), grpc.StatusCode.UNAUTHENTICATED),
]


@pytest.mark.parametrize("exc,code", CASES)
def test_unary_and_stream_map_the_same(exc, code):
    handlers = Handlers(exc)
    ctx = RecordingContext()
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(handlers.unary(None, ctx))
    assert (ctx.code, ctx.details) == (code, str(exc))

    async def drain():
        return [x async for x in handlers.stream(None, ctx2)]

    ctx2 = RecordingContext()
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(drain())
    assert (ctx2.code, ctx2.details) == (code, str(exc))


def test_unexpected_error_is_internal_with_generic_message(caplog):
    ctx = RecordingContext()
    with caplog.at_level(logging.ERROR), pytest.raises(grpc.aio.AbortError):
        asyncio.run(Handlers(KeyError("secret detail")).unary(None, ctx))
    assert ctx.code == grpc.StatusCode.INTERNAL and ctx.details == GENERIC_INTERNAL
    assert "secret detail" not in ctx.details
    assert sum("Traceback" in r.exc_text for r in caplog.records if r.exc_text) == 1


def test_client_maps_codes_back_to_the_same_classes():
    for _, code in CASES:
        back = errors.error_for_code(code, "x")
        assert isinstance(back, errors.BertrecError) and back.code == code
    assert type(errors.error_for_code(grpc.StatusCode.NOT_FOUND, "x")) is errors.NotFound
