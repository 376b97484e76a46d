"""Stage timings, the Server-Timing trailer, request-id acceptance, and the metrics port setting."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from bertrec import stages
from bertrec.cli import build_parser
from bertrec.config import load_config
from bertrec.server.metrics import split_method
from bertrec.server.observability import accept_request_id, parse_server_timing, server_timing


def test_nested_stages_are_subtracted_from_their_parent():
    def in_thread():
        with stages.stage("user"):
            time.sleep(0.01)

    async def call():
        times = stages.begin()
        started = time.perf_counter()
        with stages.stage("rank"):
            await asyncio.sleep(0.02)
            with stages.stage("encode"):
                await asyncio.sleep(0.03)
            await asyncio.to_thread(in_thread)  # a thread started inside a stage reports to the same call
        return times.as_dict(), (time.perf_counter() - started) * 1000

    ms, total = asyncio.run(call())
    assert ms["encode"] >= 29 and ms["user"] >= 9 and ms["rank"] >= 19
    assert ms["rank"] + ms["encode"] + ms["user"] == pytest.approx(total, abs=1.0)


def test_concurrent_tasks_report_to_their_own_call():
    async def one(delay: float):
        times = stages.begin()
        with stages.stage("work"):
            await asyncio.sleep(delay)
        return times.as_dict()["work"]

    async def both():
        return await asyncio.gather(one(0.01), one(0.06))

    short, long = asyncio.run(both())
    assert short < 40 <= long


def test_stage_outside_a_call_is_a_no_op():
    with stages.stage("encode"):
        pass


def test_server_timing_round_trip():
    value = server_timing({"user": 1.25, "encode": 10.0}, 12.5)
    assert value == "user;dur=1.250, encode;dur=10.000, total;dur=12.500"
    assert parse_server_timing(value) == {"user": 1.25, "encode": 10.0, "total": 12.5}


def test_request_ids_we_echo_are_bounded_printable_ascii():
    assert accept_request_id((("x-request-id", "abc-123"),)) == "abc-123"
    for bad in ("", "has space", "x" * 129, "caf\u00e9"):
        assert re.fullmatch(r"[0-9a-f]{32}", accept_request_id((("x-request-id", bad),)))
    assert re.fullmatch(r"[0-9a-f]{32}", accept_request_id(()))


def test_split_method():
    assert split_method("/bertrec.v1.Recommender/Recommend") == ("bertrec.v1.Recommender", "Recommend")
    assert split_method("garbage") == ("unknown", "garbage")


def test_metrics_port_setting():
    assert load_config(environ={}).server.metrics_port == -1  # off unless asked for
    assert load_config(environ={"BERTREC_SERVER_METRICS_PORT": "9464"}).server.metrics_port == 9464
    args = build_parser().parse_args(["serve", "--metrics-port", "0"])
    assert args.metrics_port == 0
    with pytest.raises(ValueError):
        load_config(environ={"BERTREC_SERVER_METRICS_PORT": "-2"})


def test_index_search_breadth_metric():
    """bertrec_index_search_breadth reports the setting in effect and whether it is automatic."""
    from types import SimpleNamespace

    import numpy as np

    from bertrec.config import IndexConfig
    from bertrec.server.metrics import StateCollector, _state_metrics
    from bertrec.workers.index import FaissIndex

    async def no_replicas():
        return []

    def samples(index, config):
        state = SimpleNamespace(
            catalog=SimpleNamespace(index=index),
            config=SimpleNamespace(index=config),
            pool=SimpleNamespace(model_name="m", info=no_replicas, coalescing={"requests": 0, "replica_calls": 0}),
            profiles=SimpleNamespace(hits=0, misses=0, hit_rate=0.0),
        )
        snapshot = asyncio.run(StateCollector(state, None)._read())
        metric = next(m for m in _state_metrics(snapshot) if m.name == "bertrec_index_search_breadth")
        return {tuple(sorted(s.labels.items())): s.value for s in metric.samples}

    index = FaissIndex(8, "HNSW32", use_gpu="no")
    index.add(np.arange(3), np.eye(3, 8, dtype=np.float32))
    assert samples(index, IndexConfig()) == {(("mode", "auto"), ("setting", "ef_search")): 128}
    index = FaissIndex(8, "IVF2,Flat", nprobe=1, use_gpu="no")
    index.add(np.arange(3), np.eye(3, 8, dtype=np.float32))
    assert samples(index, IndexConfig(nprobe=1)) == {(("mode", "set"), ("setting", "nprobe")): 1}
    assert samples(FaissIndex(8, "Flat", use_gpu="no"), IndexConfig()) == {}


def test_interceptor_sees_refused_calls_and_handler_failures():
    """The interceptor chain as the server builds it, around toy handlers: no Ray, no model."""
    import grpc

    from bertrec.server.auth import TokenAuthInterceptor
    from bertrec.server.metrics import ServerMetrics
    from bertrec.server.observability import ObservabilityInterceptor

    async def echo(request, context):
        with stages.stage("work"):
            return request

    async def boom(request, context):
        raise RuntimeError("a handler bug")

    async def chunks(request, context):
        for part in (b"a", b"b"):
            yield part

    async def written(request, context):  # the other streaming style: context.write
        await context.write(b"w")

    async def run():
        metrics = ServerMetrics()
        server = grpc.aio.server(interceptors=[ObservabilityInterceptor(metrics), TokenAuthInterceptor("secret")])
        handlers = {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Boom": grpc.unary_unary_rpc_method_handler(boom),
            "Chunks": grpc.unary_stream_rpc_method_handler(chunks),
            "Written": grpc.unary_stream_rpc_method_handler(written),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Toy", handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        good = (("authorization", "Bearer secret"), ("x-request-id", "toy-1"))
        results = {}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/t.Toy/Echo")(b"hi", metadata=good)
            results["echo"] = (await call, dict(await call.trailing_metadata()))
            call = channel.unary_unary("/t.Toy/Echo")(b"hi", metadata=(("x-request-id", "toy-2"),))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            results["refused"] = (refused.value.code(), dict(refused.value.trailing_metadata()))
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await channel.unary_unary("/t.Toy/Boom")(b"", metadata=good)
            results["boom"] = failed.value.code()
            results["chunks"] = [m async for m in channel.unary_stream("/t.Toy/Chunks")(b"", metadata=good)]
            results["written"] = [m async for m in channel.unary_stream("/t.Toy/Written")(b"", metadata=good)]
        await server.stop(0)
        return metrics, results

    metrics, results = asyncio.run(run())
    response, trailers = results["echo"]
    assert response == b"hi" and trailers["x-request-id"] == "toy-1"
    assert "work" in parse_server_timing(trailers["server-timing"])
    code, trailers = results["refused"]
    assert code == grpc.StatusCode.UNAUTHENTICATED and trailers["x-request-id"] == "toy-2"
    assert results["boom"] == grpc.StatusCode.UNKNOWN
    assert results["chunks"] == [b"a", b"b"] and results["written"] == [b"w"]

    def handled(method, rpc_type, code):
        labels = {"grpc_service": "t.Toy", "grpc_method": method, "grpc_type": rpc_type, "grpc_code": code}
        return metrics.registry.get_sample_value("bertrec_grpc_server_handled_total", labels)

    assert handled("Echo", "unary", "OK") == 1
    assert handled("Echo", "unary", "UNAUTHENTICATED") == 1
    assert handled("Boom", "unary", "UNKNOWN") == 1
    assert handled("Chunks", "server_stream", "OK") == 1
    assert handled("Written", "server_stream", "OK") == 1


def test_handlers_are_wrapped_once_per_method_and_rewrapped_when_the_handler_changes():
    import grpc

    from bertrec.server.observability import WrappedHandlers

    async def behavior(request, context):
        return request

    made: list[str] = []

    def wrap(handler, method):
        made.append(method)
        return grpc.unary_unary_rpc_method_handler(handler.unary_unary)

    cache = WrappedHandlers()
    real = grpc.unary_unary_rpc_method_handler(behavior)
    first = cache.get(real, "/s/M", wrap)
    assert cache.get(real, "/s/M", wrap) is first and made == ["/s/M"]
    # Another handler for the same method (the token check's refusal): its own wrap, kept beside.
    refusal = grpc.unary_unary_rpc_method_handler(behavior)
    refused = cache.get(refusal, "/s/M", wrap)
    assert refused is not first and made == ["/s/M", "/s/M"]
    assert cache.get(real, "/s/M", wrap) is first and cache.get(refusal, "/s/M", wrap) is refused
    assert len(made) == 2
