"""bench/grpc_floor.py: the do-nothing Recommend server answers with exactly the captured bytes
and trailers, echoes each caller's request id, and the Recommend benchmark's client can drive it."""

from __future__ import annotations

import asyncio
import base64

import grpc
import pytest

from bench import grpc_floor
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
    again = asyncio.run(grpc_floor.capture(served.target, pb.RecommendRequest(k=K)))
    assert again["messages"] == sample["messages"]
    trailers = dict(again["trailers"])
    assert trailers[TIMING_KEY] == TIMING
    assert REQUEST_ID_KEY not in trailers  # no id sent: none echoed, the captured one is not replayed


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
