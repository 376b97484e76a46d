"""bench/grpc_floor.py: the do-nothing Recommend server answers with exactly the captured bytes
and trailers, echoes each caller's request id, and the Recommend benchmark's client can drive it."""

from __future__ import annotations

import asyncio
import base64

import grpc
import pytest

from bench import grpc_floor, recommend
from bench.recommend import K, drive
from bertrec.server.observability import REQUEST_ID_KEY, TIMING_KEY, parse_server_timing
from bertrec.v1 import recommender_pb2 as pb

TIMING = "search;dur=1.250, rank;dur=0.200, stream;dur=0.100, total;dur=1.700"


@pytest.fixture()
def floor(tmp_path):
    items = [pb.ScoredItem(item_id=i, score=1.0 / i, rank=i, because_item_id=7) for i in range(1, K + 1)]
    message = pb.RecommendResponse(request_id="r", items=items, last=True).SerializeToString()
    sample = {
        "messages": [base64.b64encode(message).decode()],
        "trailers": [(REQUEST_ID_KEY, "captured-id"), (TIMING_KEY, TIMING)],
    }
    served = grpc_floor.ServedFloor(grpc_floor.write_sample(tmp_path / "sample.json", sample))
    yield served, sample
    served.stop()


def test_answers_with_the_captured_messages_and_trailers(floor):
    served, sample = floor
    again = asyncio.run(grpc_floor.capture(served.target, pb.RecommendRequest(k=K, request_id="r")))
    assert again["messages"] == sample["messages"]
    trailers = dict(again["trailers"])
    assert trailers[TIMING_KEY] == TIMING
    assert REQUEST_ID_KEY not in trailers  # no id sent: none echoed, the captured one is not replayed

    other = asyncio.run(grpc_floor.capture(served.target, pb.RecommendRequest(k=K, request_id="q-7")))
    (message,) = [pb.RecommendResponse.FromString(base64.b64decode(m)) for m in other["messages"]]
    assert message.request_id == "q-7" and len(message.items) == K  # the caller's id in the body


def test_the_benchmark_client_drives_it_and_ids_are_echoed(floor):
    served, _ = floor
    out = asyncio.run(drive(served.target, [pb.RecommendRequest(k=K)] * 40, 4, "floor-test"))
    assert len(out["e2e_s"]) == 40 and all(s > 0 for s in out["e2e_s"])
    assert all(t == parse_server_timing(TIMING) for t in out["timings"])

    async def one_call():
        async with grpc.aio.insecure_channel(served.target) as channel:
            call = channel.unary_stream(grpc_floor.METHOD, request_serializer=pb.RecommendRequest.SerializeToString)(
                pb.RecommendRequest(k=K), metadata=((REQUEST_ID_KEY, "abc-123"),)
            )
            _ = [m async for m in call]
            return dict(await call.trailing_metadata())

    assert asyncio.run(one_call())[REQUEST_ID_KEY] == "abc-123"


def _rounds(e2e_ms: list[float], stages: dict[str, float]) -> dict:
    timing = {**stages, "total": sum(stages.values()) + 0.1}
    return {"e2e_s": [ms / 1000 for ms in e2e_ms], "timings": [timing] * len(e2e_ms), "elapsed_s": sum(e2e_ms) / 1000}


def test_the_floor_beside_the_service_in_the_report(tmp_path, capsys):
    # Two passes as `run_size` makes them: the first (2 replicas) with every level and the floor,
    # the second (1 replica) at concurrency 8 only and without one.
    stages = {"search": 1.5, "rank": 0.2, "stream": 0.3}
    first = []
    for c, e2e, floor_e2e in ((1, [2.4, 2.6], [0.4, 0.6]), (8, [12.0, 14.0], [1.5, 2.5])):
        run = {"replicas": 2, **recommend.summarise(c, [_rounds(e2e, stages)])}
        run["grpc_floor"] = recommend.floor_summary([_rounds(floor_e2e, {})], run)
        first.append(run)
    second = [{"replicas": 1, **recommend.summarise(8, [_rounds([13.0, 13.0], stages)])}]
    memory = {"start_s": 5.0, "server_rss_mib": 500.0, "server_peak_rss_mib": 600.0, "ray_rss_mib": 2000.0}
    size = {
        "items": recommend.TARGET_SIZE,
        "runs": first + second,
        "memory": [{"replicas": r, **memory, "total_rss_mib": 2500.0} for r in (2, 1)],
        "in_process": {
            "p50_ms": 1.0,
            "p99_ms": 2.0,
            "rps": 900.0,
            "service_p50_over_in_process": 2.5,
            "service_rps_over_in_process": 0.4,
        },
    }
    result = {"settings": {"replicas": [2, 1], "concurrency": [1, 8], "index": "HNSW32"}, "sizes": [size]}

    c1, c8 = first
    assert c1["grpc_floor"]["e2e_mean_ms"] == pytest.approx(0.5)
    assert c1["grpc_floor"]["share_of_service_e2e"] == pytest.approx(0.5 / 2.5)
    assert c1["overhead_ms"] == pytest.approx(2.5 - 2.0)
    assert c1["grpc_floor"]["service_overhead_beyond_floor_ms"] == pytest.approx(0.0)
    assert c8["grpc_floor"]["share_of_service_e2e"] == pytest.approx(2.0 / 13.0)

    result["target"] = recommend.target(result)
    assert result["target"]["grpc_floor_share"] == {1: pytest.approx(0.2), 8: pytest.approx(2.0 / 13.0)}
    assert result["target"]["overhead_share"] == pytest.approx(11.0 / 13.0)  # replicas 2 at concurrency 8
    recommend.print_tables(result)
    out = capsys.readouterr().out
    assert "gRPC floor" in out and "concurrency 1: 20.0%, concurrency 8: 15.4%" in out
    recommend.plot(result, tmp_path / "recommend.png")
    assert (tmp_path / "recommend.png").stat().st_size > 0
