"""Metrics over HTTP, request ids in trailers and in the access log, against a real server."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bertrec.client import AsyncClient, Client, NotFound
from bertrec.server.observability import parse_server_timing
from bertrec.v1 import recommender_pb2 as pb
from bertrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.integration.helpers import catalogue, make_config

pytestmark = pytest.mark.integration

ITEMS = 60
UNKNOWN_ID = 987654321


@pytest.fixture(scope="module")
def service(ray_cluster, server_thread_factory, tmp_path_factory):
    config = make_config(
        tmp_path_factory.mktemp("data"), server={"metrics_port": 0}, workers={"replicas": 1, "cpus_per_replica": 0.5}
    )
    server = server_thread_factory(config)
    client = Client(server.target, timeout_s=120)
    server.wait_ready(client)
    items, ratings = catalogue()
    client.upsert_items(items[:ITEMS])
    ids = {i.id for i in items[:ITEMS]}
    liked = [r for r in ratings if r.item_id in ids][:400]
    client.record_interactions(liked)
    yield server, client, liked[0].user_id
    client.close()
    server.stop()


@pytest.fixture
def channel(service):
    server, _, _ = service
    with grpc.insecure_channel(server.target) as ch:
        yield ch


def scrape(server) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from the server's /metrics endpoint."""
    assert server.server.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{server.server.metrics_port}/metrics", timeout=30) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def rpc(service_name: str, method: str, rpc_type: str, **extra: str) -> dict[str, str]:
    return {"grpc_service": f"bertrec.v1.{service_name}", "grpc_method": method, "grpc_type": rpc_type, **extra}


def eventually(check, timeout_s: float = 10.0):
    """Errors are recorded just after their status is sent, so a caller can get there first."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_rpc_counters_and_histograms_move_with_their_labels(service, channel):
    server, client, user = service
    before = scrape(server)
    list(client.recommend(user, k=5))
    list(client.recommend(user, k=5))
    with pytest.raises(NotFound):
        client.get_items([UNKNOWN_ID])
    client.upsert_items([{"id": 1_000_001, "text": "Observability: The Movie (2031)"}])
    list(client.recommend_many([]))
    with pytest.raises(grpc.RpcError) as unimplemented:
        channel.unary_unary("/bertrec.v1.Nowhere/Nothing")(b"", timeout=10)
    assert unimplemented.value.code() == grpc.StatusCode.UNIMPLEMENTED

    def moved():
        after = scrape(server)

        def delta(name, **labels):
            return value(after, name, **labels) - value(before, name, **labels)

        handled = "bertrec_grpc_server_handled_total"
        assert delta(handled, **rpc("Recommender", "Recommend", "server_stream", grpc_code="OK")) == 2
        assert delta(handled, **rpc("Catalog", "GetItems", "unary", grpc_code="NOT_FOUND")) == 1
        assert delta(handled, **rpc("Catalog", "UpsertItems", "client_stream", grpc_code="OK")) == 1
        assert delta(handled, **rpc("Recommender", "RecommendStream", "bidi_stream", grpc_code="OK")) == 1
        unknown = {"grpc_service": "unknown", "grpc_method": "unknown", "grpc_type": "unknown"}
        assert delta(handled, **unknown, grpc_code="UNIMPLEMENTED") == 1  # no caller-chosen label values
        seconds = "bertrec_grpc_server_handling_seconds"
        assert delta(f"{seconds}_count", **rpc("Recommender", "Recommend", "server_stream")) == 2
        assert delta(f"{seconds}_sum", **rpc("Recommender", "Recommend", "server_stream")) > 0
        assert delta(f"{seconds}_bucket", **rpc("Recommender", "Recommend", "server_stream", le="+Inf")) == 2
        for stage in ("search", "rank", "stream"):  # "user" only where a profile is built
            assert delta("bertrec_stage_seconds_count", grpc_method="Recommend", stage=stage) == 2, stage
        assert delta("bertrec_stage_seconds_count", grpc_method="UpsertItems", stage="encode") == 1
        return after

    after = eventually(moved)
    assert not [k for k in after if k[0].startswith("bertrec_") and "Nowhere" in str(k[1])]


def test_state_metrics_read_on_scrape(service):
    server, client, user = service
    list(client.recommend(user, k=3))
    list(client.recommend(user, k=3))  # same history: the second lookup is a cache hit
    samples = scrape(server)
    info = client.info()
    assert value(samples, "bertrec_ready") == 1
    assert value(samples, "bertrec_model_info", model="all-MiniLM-L6-v2") == 1
    assert value(samples, "bertrec_encoder_replicas") == len(info.replicas) == 1
    replica = info.replicas[0].name
    assert value(samples, "bertrec_encoder_replica_up", replica=replica, device="cpu") == 1
    assert (("bertrec_encoder_queue_depth", (("replica", replica),))) in samples
    texts = value(samples, "bertrec_encoder_texts_total", replica=replica)
    batches = value(samples, "bertrec_encoder_batches_total", replica=replica)
    assert texts >= ITEMS and 1 <= batches <= texts
    assert value(samples, "bertrec_encoder_mean_batch_size", replica=replica) == pytest.approx(texts / batches)
    assert value(samples, "bertrec_index_size") == info.index_size >= ITEMS
    assert value(samples, "bertrec_index_info", index_type="Flat", device="cpu") == 1
    hits, misses = value(samples, "bertrec_user_cache_hits_total"), value(samples, "bertrec_user_cache_misses_total")
    assert hits >= 1 and misses >= 1
    assert value(samples, "bertrec_user_cache_hit_ratio") == pytest.approx(hits / (hits + misses))


def test_request_id_and_stage_timings_come_back_in_trailers(service, channel):
    server, _, user = service
    recommender = pb_grpc.RecommenderStub(channel)
    call = recommender.Recommend(
        pb.RecommendRequest(user=pb.UserQuery(user_id=user, text="a heist"), k=5),
        metadata=(("x-request-id", "trace-abc-123"),),
        timeout=60,
    )
    assert len([item for chunk in call for item in chunk.items]) == 5
    trailers = dict(call.trailing_metadata())
    assert trailers["x-request-id"] == "trace-abc-123"
    timing = parse_server_timing(trailers["server-timing"])
    assert {"user", "encode", "rank", "stream", "total"} <= set(timing)
    assert all(ms >= 0 for ms in timing.values())
    # Nested stages are not counted twice: the parts add up to no more than the whole.
    assert sum(ms for name, ms in timing.items() if name != "total") <= timing["total"] + 0.01

    embedder = pb_grpc.EmbedderStub(channel)
    _, call = embedder.Encode.with_call(pb.EncodeRequest(texts=["x"]), metadata=(("x-request-id", "enc-1"),))
    trailers = dict(call.trailing_metadata())
    assert trailers["x-request-id"] == "enc-1" and "encode" in parse_server_timing(trailers["server-timing"])

    # Errors carry the id too; an id we would not echo (spaces, too long) is replaced by a fresh one.
    catalog = pb_grpc.CatalogStub(channel)
    for given, expected in (("err-7", "err-7"), ("has spaces", None), ("x" * 200, None)):
        with pytest.raises(grpc.RpcError) as failed:
            catalog.GetItems(pb.GetItemsRequest(item_ids=[UNKNOWN_ID]), metadata=(("x-request-id", given),))
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        echoed = dict(failed.value.trailing_metadata())["x-request-id"]
        assert echoed == expected if expected else re.fullmatch(r"[0-9a-f]{32}", echoed)


def access_lines(caplog) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "bertrec.access"]


def test_sdk_sends_request_ids_and_the_server_logs_one_json_line_per_rpc(service, caplog):
    server, client, user = service
    caplog.set_level(logging.INFO, logger="bertrec.access")
    client.encode(["hello"], request_id="sdk-sync-1")
    list(client.recommend(user, k=2, request_id="sdk-sync-2"))
    with pytest.raises(NotFound):
        client.get_items([UNKNOWN_ID], request_id="sdk-sync-3")
    client.info()  # no id given: the SDK makes one

    async def async_calls():
        async with AsyncClient(server.target, timeout_s=60) as aclient:
            await aclient.encode(["hello"], request_id="sdk-async-1")
            return [r async for r in aclient.recommend(user, k=2, request_id="sdk-async-2")]

    assert len(asyncio.run(async_calls())) == 2

    def logged():
        lines = {line["request_id"]: line for line in access_lines(caplog)}
        for rid, method, code in (
            ("sdk-sync-1", "/bertrec.v1.Embedder/Encode", "OK"),
            ("sdk-sync-2", "/bertrec.v1.Recommender/Recommend", "OK"),
            ("sdk-sync-3", "/bertrec.v1.Catalog/GetItems", "NOT_FOUND"),
            ("sdk-async-1", "/bertrec.v1.Embedder/Encode", "OK"),
            ("sdk-async-2", "/bertrec.v1.Recommender/Recommend", "OK"),
        ):
            assert rid in lines, rid
            line = lines[rid]
            assert (line["method"], line["code"]) == (method, code)
            assert line["duration_ms"] > 0 and line["peer"]
        assert {"search", "rank", "stream"} <= set(lines["sdk-sync-2"]["stages_ms"])
        assert "encode" in lines["sdk-sync-1"]["stages_ms"]
        generated = [line for line in lines.values() if line["method"] == "/bertrec.v1.Admin/Info"]
        assert generated and all(re.fullmatch(r"[0-9a-f]{32}", line["request_id"]) for line in generated)

    eventually(logged)


def test_concurrent_calls_keep_their_own_ids_and_timings(service, channel):
    from concurrent.futures import ThreadPoolExecutor

    _, _, user = service
    recommender = pb_grpc.RecommenderStub(channel)

    def one(n: int) -> tuple[str, dict]:
        call = recommender.Recommend(
            pb.RecommendRequest(user=pb.UserQuery(user_id=user, text=f"film number {n}"), k=3),
            metadata=(("x-request-id", f"parallel-{n}"),),
            timeout=60,
        )
        list(call)
        trailers = dict(call.trailing_metadata())
        return trailers["x-request-id"], parse_server_timing(trailers["server-timing"])

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    assert [rid for rid, _ in results] == [f"parallel-{n}" for n in range(8)]
    for _, timing in results:
        assert {"user", "encode", "rank", "stream"} <= set(timing)
        assert sum(ms for name, ms in timing.items() if name != "total") <= timing["total"] + 0.01
