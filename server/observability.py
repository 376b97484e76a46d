"""Per-RPC observability: request id, one JSON access-log line, trailers with stage timings, metrics.

One server interceptor wraps every handler (unary and streaming, ours, health and reflection) and,
placed before the token check, also sees the calls that check refuses. For each call it:

- takes the caller's `x-request-id` (or makes one) and sends it back in the trailing metadata,
  on errors too, so a caller can quote it when asking what happened;
- collects the stage timings the code below marks with `bertrec.stages.stage` and returns them
  in a `server-timing` trailer (W3C Server-Timing syntax, milliseconds) on success;
- logs one JSON line on the `bertrec.access` logger: request id, method, status code, duration,
  stages, peer;
- records the call in the server's Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import grpc

from bertrec import stages
from bertrec.server.metrics import ServerMetrics

access_log = logging.getLogger("bertrec.access")

REQUEST_ID_KEY = "x-request-id"
TIMING_KEY = "server-timing"
# What we echo into logs and trailers: printable ASCII without spaces, bounded. Anything else is
# replaced by a fresh id rather than refused: observability must never fail a call.
_VALID_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
QUIET_PREFIXES = ("/grpc.health.v1.Health/",)  # probes every few seconds: logged at DEBUG

_request_id: ContextVar[str] = ContextVar("bertrec_request_id", default="")


def current_request_id() -> str:
    """The id of the RPC the calling code serves, or "" outside one."""
    return _request_id.get()


def accept_request_id(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and _VALID_REQUEST_ID.fullmatch(value):
            return value
    return uuid.uuid4().hex


def server_timing(stages_ms: dict[str, float], total_ms: float) -> str:
    """W3C Server-Timing: 'user;dur=1.2, encode;dur=8.0, total;dur=10.1'."""
    parts = [f"{name};dur={ms:.3f}" for name, ms in stages_ms.items()]
    return ", ".join([*parts, f"total;dur={total_ms:.3f}"])


def parse_server_timing(value: str) -> dict[str, float]:
    """The inverse of `server_timing`, for tests and tools."""
    out = {}
    for part in value.split(","):
        name, _, duration = part.strip().partition(";dur=")
        if name and duration:
            out[name] = float(duration)
    return out


@dataclass
class _Call:
    method: str
    rpc_type: str
    started: float = field(default_factory=time.perf_counter)
    request_id: str = ""
    times: stages.StageTimes | None = None


_KINDS = {
    # (request streaming, response streaming) -> (handler attribute, label, factory)
    (False, False): ("unary_unary", "unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", "server_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", "client_stream", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", "bidi_stream", grpc.stream_stream_rpc_method_handler),
}


class WrappedHandlers:
    """An interceptor's wrapped handler per (method, handler): the server hands back the same
    handler object for a method on every call (and the token check one refusal per kind), so
    each is wrapped once, not per call."""

    def __init__(self) -> None:
        # (method, id(handler)) -> (handler, wrapped); the handler is kept so its id stays its own.
        self._wrapped: dict[tuple[str, int], tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def get(
        self,
        handler: grpc.RpcMethodHandler,
        method: str,
        wrap: Callable[[grpc.RpcMethodHandler, str], grpc.RpcMethodHandler],
    ) -> grpc.RpcMethodHandler:
        cached = self._wrapped.get((method, id(handler)))
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = wrap(handler, method)
        if len(self._wrapped) < MAX_WRAPPED_HANDLERS:  # the server's own methods: a bounded set
            self._wrapped[(method, id(handler))] = (handler, wrapped)
        return wrapped


MAX_WRAPPED_HANDLERS = 512


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: ServerMetrics | None = None):
        self.metrics = metrics
        self._wrapped = WrappedHandlers()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            # gRPC answers UNIMPLEMENTED. The name is the caller's to choose: keep it out of the
            # metric labels, or anyone could create unbounded series.
            call = _Call("/unknown/unknown", "unknown")
            call.request_id = accept_request_id(handler_call_details.invocation_metadata)
            self._finish(call, "UNIMPLEMENTED", None, shown_method=handler_call_details.method)
            return None
        return self._wrapped.get(handler, handler_call_details.method, self._wrap)

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        attribute, rpc_type, factory = _KINDS[(handler.request_streaming, handler.response_streaming)]
        behavior = getattr(handler, attribute)
        if inspect.isasyncgenfunction(behavior):
            wrapped = self._wrap_generator(behavior, method, rpc_type)
        else:
            wrapped = self._wrap_coroutine(behavior, method, rpc_type)
        return factory(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _begin(self, method: str, rpc_type: str, context: grpc.aio.ServicerContext) -> _Call:
        # Runs in the RPC's own task, so the context variables set here belong to this call only.
        call = _Call(method, rpc_type)
        call.request_id = accept_request_id(context.invocation_metadata())
        _request_id.set(call.request_id)
        call.times = stages.begin()
        # Set now so an abort (which sends the status at once) still carries it.
        context.set_trailing_metadata(((REQUEST_ID_KEY, call.request_id),))
        return call

    def _succeed(self, call: _Call, context: grpc.aio.ServicerContext) -> None:
        assert call.times is not None
        stages_ms = call.times.as_dict()
        timing = server_timing(stages_ms, (time.perf_counter() - call.started) * 1000.0)
        context.set_trailing_metadata(((REQUEST_ID_KEY, call.request_id), (TIMING_KEY, timing)))
        code, ended = _code_name(context.code()) or "OK", time.perf_counter()
        # The caller has its answer once gRPC sends the status, which it does when this handler
        # returns: the metrics and the access-log line wait for the event loop's next turn
        # instead of holding the status back (about 0.1 ms a call).
        asyncio.get_running_loop().call_soon(self._finish, call, code, context, "", stages_ms, ended)

    def _fail(self, call: _Call, context: grpc.aio.ServicerContext, exc: BaseException) -> None:
        self._finish(call, _failure_code(context, exc), context)

    def _wrap_coroutine(self, behavior: Callable, method: str, rpc_type: str) -> Callable:
        async def observed(request_or_iterator, context):
            call = self._begin(method, rpc_type, context)
            try:
                response = await behavior(request_or_iterator, context)
            except BaseException as exc:
                self._fail(call, context, exc)
                raise
            self._succeed(call, context)
            return response

        return observed

    def _wrap_generator(self, behavior: Callable, method: str, rpc_type: str) -> Callable:
        async def observed(request_or_iterator, context):
            call = self._begin(method, rpc_type, context)
            try:
                async for response in behavior(request_or_iterator, context):
                    yield response
            except BaseException as exc:
                self._fail(call, context, exc)
                raise
            self._succeed(call, context)

        return observed

    def _finish(
        self,
        call: _Call,
        code: str,
        context: grpc.aio.ServicerContext | None,
        shown_method: str = "",
        stages_ms: dict[str, float] | None = None,
        ended: float | None = None,
    ) -> None:
        seconds = (ended or time.perf_counter()) - call.started
        if stages_ms is None:
            stages_ms = call.times.as_dict() if call.times is not None else {}
        if self.metrics is not None:
            self.metrics.observe_rpc(call.method, call.rpc_type, code, seconds, stages_ms)
        method = shown_method or call.method
        level = logging.DEBUG if method.startswith(QUIET_PREFIXES) else logging.INFO
        if not access_log.isEnabledFor(level):
            return
        record = {
            "ts": round(time.time(), 3),
            "request_id": call.request_id,
            "method": method,
            "code": code,
            "duration_ms": round(seconds * 1000.0, 3),
            "stages_ms": stages_ms,
            "peer": context.peer() if context is not None else "",
        }
        access_log.log(level, "%s", json.dumps(record, ensure_ascii=True))


def _code_name(code: Any) -> str:
    if code is None:
        return ""
    if isinstance(code, grpc.StatusCode):
        return code.name
    for status in grpc.StatusCode:  # some paths hand back the integer value
        if status.value[0] == code:
            return status.name
    return "UNKNOWN"


def _failure_code(context: grpc.aio.ServicerContext, exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AbortError):
        return _code_name(context.code()) or "UNKNOWN"
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        remaining = context.time_remaining()
        return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    return "UNKNOWN"  # what gRPC answers for an exception a handler let escape
