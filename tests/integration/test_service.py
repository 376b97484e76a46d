"""The service end to end through the SDK: real gRPC server, local Ray, the packaged model, FAISS."""

from __future__ import annotations

import asyncio
import os
import sys
import threading

import grpc
import numpy as np
import pytest

from bertrec.client import AsyncClient, Client, Item, NotFound
from bertrec.server.worker_threads import MAX_NICE
from bertrec.types import RecommendQuery, Stage, UserQuery
from tests.integration.helpers import catalogue, make_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def service(ray_cluster, server_thread_factory, tmp_path_factory):
    server = server_thread_factory(make_config(tmp_path_factory.mktemp("data")))
    client = Client(server.target, timeout_s=120)
    server.wait_ready(client)
    items, ratings = catalogue()
    summary = client.upsert_items(items, batch_size=64)
    assert (summary.received, summary.inserted, summary.encoded) == (len(items), len(items), len(items))
    for start in range(0, len(ratings), 500):
        client.record_interactions(ratings[start : start + 500])
    yield server, client
    client.close()
    server.stop()


def test_info_reports_model_replicas_and_sizes(service):
    _, client = service
    info = client.info()
    items, ratings = catalogue()
    assert info.model == "all-MiniLM-L6-v2" and info.dim == 384
    assert len(info.replicas) == 2 and all(r.healthy and r.device == "cpu" for r in info.replicas)
    assert all(r.runtime == "onnx" for r in info.replicas)  # fp32 CPU replicas run on ONNX Runtime
    assert info.index_type == "Flat" and info.index_device == "cpu"
    assert info.index_size == info.item_count == len(items)
    assert info.interaction_count == len(ratings)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_blocking_work_runs_below_the_event_loops_priority(service):
    """Searches and store reads go through the loop's default executor (`asyncio.to_thread`); its
    threads run `server.worker_nice` levels below the loop that carries gRPC."""
    server, client = service
    by = server.server.config.server.worker_nice
    assert by > 0  # the default
    assert list(client.recommend(catalogue()[1][0].user_id, k=3))  # a search, in a worker thread

    def nice(native_id: int) -> int:
        return os.getpriority(os.PRIO_PROCESS, native_id)

    expected = min(nice(server.thread.native_id) + by, MAX_NICE)
    assert server.call(asyncio.to_thread(lambda: nice(threading.get_native_id()))) == expected
    workers = [t for t in threading.enumerate() if t.name.startswith("bertrec-worker")]
    assert workers and all(nice(t.native_id) == expected for t in workers)


def test_recommend_streams_complete_ordered_unseen_results(service):
    server, client = service
    _, ratings = catalogue()
    user = ratings[0].user_id
    seen = {r.item_id for r in ratings if r.user_id == user}
    results = list(client.recommend(user, k=25, chunk_size=4, include_items=True))
    assert [r.rank for r in results] == list(range(1, 26))
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)
    assert not {r.item_id for r in results} & seen
    assert all(r.item is not None and r.item.text for r in results)
    assert all(r.because_item_id in seen for r in results)
    # The scores are the exact cosine between the user's pooled vector and the item vector.
    user_vector = asyncio.run_coroutine_threadsafe(server.state.profiles.for_user(user), server.loop).result().vector
    stored = server.state.store.get_vectors([r.item_id for r in results], server.state.catalog.model)
    for r in results:
        assert r.score == pytest.approx(float(stored[r.item_id] @ user_vector), abs=1e-5)
    # The Flat index's scores are exact, so the top k comes straight from them; re-scoring the
    # whole pool (the path of compressed indexes and of MMR, here with a negligible diversity)
    # gives the same list.
    assert server.state.catalog.index.exact_scores
    rescored = list(client.recommend(user, k=25, diversity=1e-9))
    assert [r.item_id for r in rescored] == [r.item_id for r in results]
    assert [r.score for r in rescored] == pytest.approx(scores, abs=1e-5)


def test_exclude_seen_off_and_explicit_history(service):
    _, client = service
    items, _ = catalogue()
    history = [items[0].id, items[1].id]
    with_seen = [r.item_id for r in client.recommend(history=history, k=5, exclude_seen=False)]
    without = [r.item_id for r in client.recommend(history=history, k=5)]
    assert set(history) & set(with_seen)
    assert not set(history) & set(without)


def test_text_query_and_filters(service):
    _, client = service
    results = list(
        client.recommend(text="animated film for children", k=10, include_items=True, filters={"genres": "Animation"})
    )
    assert results and all("Animation" in r.item.metadata["genres"] for r in results)
    assert all(r.because_item_id == 0 for r in results)


def test_diversity_changes_the_list(service):
    _, client = service
    _, ratings = catalogue()
    user = ratings[0].user_id
    plain = [r.item_id for r in client.recommend(user, k=10)]
    diverse = list(client.recommend(user, k=10, diversity=0.7))
    assert [r.item_id for r in diverse] != plain
    assert all(r.stage == Stage.RERANKED for r in diverse)


def test_upserted_item_is_recommendable_at_once_and_delete_removes_it(service):
    _, client = service
    text = "Galactic Penguins Strike Back: the Antarctic space saga (2031)"
    summary = client.upsert_items([Item(9_000_000_001, text, {"genres": ["Sci-Fi"]})])
    assert (summary.inserted, summary.encoded) == (1, 1)
    top = list(client.recommend(text="Galactic Penguins Strike Back Antarctic space saga", k=3))
    assert top[0].item_id == 9_000_000_001
    # the same upsert again changes nothing and encodes nothing
    again = client.upsert_items([Item(9_000_000_001, text, {"genres": ["Sci-Fi"]})])
    assert (again.unchanged, again.encoded) == (1, 0)
    # a metadata-only change is stored without re-encoding
    meta = client.upsert_items([Item(9_000_000_001, text, {"genres": ["Comedy"]})])
    assert (meta.updated, meta.encoded) == (1, 0)
    assert client.get_items([9_000_000_001])[0].metadata == {"genres": ["Comedy"]}
    deleted = client.delete_items([9_000_000_001, 9_000_000_002])
    assert deleted.deleted == 1 and deleted.missing_item_ids == (9_000_000_002,)
    top = [r.item_id for r in client.recommend(text="Galactic Penguins Strike Back Antarctic space saga", k=10)]
    assert 9_000_000_001 not in top
    with pytest.raises(NotFound):
        client.get_items([9_000_000_001])


def test_changed_text_is_reencoded(service):
    _, client = service
    client.upsert_items([Item(9_000_000_010, "A quiet documentary about beekeeping")])
    changed = client.upsert_items([Item(9_000_000_010, "Explosive car chase thriller in Tokyo")])
    assert (changed.updated, changed.encoded) == (1, 1)
    top = list(client.recommend(text="Explosive car chase thriller Tokyo", k=1))
    assert top[0].item_id == 9_000_000_010
    client.delete_items([9_000_000_010])


def test_new_interaction_changes_the_cached_user_vector(service):
    _, client = service
    items, _ = catalogue()
    client.record_interactions([{"user_id": "fresh-user", "item_id": items[5].id, "weight": 1.0}])
    first = [r.item_id for r in client.recommend("fresh-user", k=5)]
    assert [r.item_id for r in client.recommend("fresh-user", k=5)] == first  # cache hit, same answer
    client.record_interactions([{"user_id": "fresh-user", "item_id": items[200].id, "weight": 5.0}])
    second = list(client.recommend("fresh-user", k=5))
    assert [r.item_id for r in second] != first
    assert items[200].id not in [r.item_id for r in second]
    assert client.forget_user("fresh-user") == 2
    with pytest.raises(NotFound):
        list(client.recommend("fresh-user", k=5))


def test_rerank_ids_and_texts(service):
    _, client = service
    items, _ = catalogue()
    candidates = [items[i].id for i in (3, 50, 120, 7)]
    results = list(client.rerank(text="toys come to life", item_ids=candidates))
    assert sorted(r.item_id for r in results) == sorted(candidates)
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
    texts = ["a cooking show", "toy cowboy and space ranger adventure", "tax law lecture"]
    by_text = list(client.rerank(text="toys come to life", texts=texts, include_items=True))
    assert by_text[0].item_id == -2 and by_text[0].item.text == texts[1]


def test_encode_matches_the_in_process_encoder(service):
    _, client = service
    from bertrec.workers.encoder import BertEncoder

    texts = ["Toy Story (1995)", "a much longer description of a film " * 5, "Heat"]
    served = np.array(client.encode(texts))
    local = BertEncoder("", "cpu").encode_items(texts)
    np.testing.assert_allclose(served, local, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)


def test_recommend_many_over_a_bidirectional_stream(service):
    _, client = service
    _, ratings = catalogue()
    users = sorted({r.user_id for r in ratings})[:6]
    queries = [RecommendQuery(user=UserQuery(user_id=u), k=7, request_id=f"req-{u}") for u in users]
    answers = dict(client.recommend_many(queries))
    assert set(answers) == {f"req-{u}" for u in users}
    for u in users:
        single = [r.item_id for r in client.recommend(u, k=7)]
        assert [r.item_id for r in answers[f"req-{u}"]] == single


def test_async_client(service):
    server, _ = service
    _, ratings = catalogue()

    async def main():
        async with AsyncClient(server.target, timeout_s=60) as client:
            assert await client.is_serving()
            results = [r async for r in client.recommend(ratings[0].user_id, k=12, chunk_size=5)]
            info = await client.info()
            vectors = await client.encode(["hello"])
            return results, info, vectors

    results, info, vectors = asyncio.run(main())
    assert [r.rank for r in results] == list(range(1, 13))
    assert info.dim == len(vectors[0]) == 384


def test_reflection_lists_the_services(service):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    server, _ = service
    with grpc.insecure_channel(server.target) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {
        "bertrec.v1.Recommender",
        "bertrec.v1.Catalog",
        "bertrec.v1.Embedder",
        "bertrec.v1.Admin",
        "grpc.health.v1.Health",
    } <= services


def test_cli_ingest_jsonl_and_csv_then_recommend_json(service, tmp_path):
    import json
    import subprocess
    import sys

    server, client = service
    items = tmp_path / "items.jsonl"
    items.write_text(
        "\n".join(
            json.dumps(
                {"id": 8_000_000 + i, "text": f"Underwater robot documentary part {i}", "metadata": {"kind": "doc"}}
            )
            for i in range(5)
        )
    )
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,timestamp,weight\ncli-user,8000000,100,1\ncli-user,8000001,200,2\n")
    base = [sys.executable, "-m", "bertrec.cli"]
    target = ["--target", server.target]
    out = subprocess.run(
        [*base, "ingest", *target, "--items", str(items), "--interactions", str(events)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "inserted=5" in out.stdout and "2 recorded" in out.stdout
    assert "items: 100%" in out.stderr  # the progress bar
    rec = subprocess.run(
        [*base, "recommend", *target, "--user", "cli-user", "--k", "3", "--json", "--filter", "kind=doc"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    results = json.loads(rec.stdout)
    assert [r["item_id"] for r in results] == [r["item_id"] for r in results if r["metadata"] == {"kind": "doc"}]
    assert {r["item_id"] for r in results} <= {8_000_002, 8_000_003, 8_000_004}
    client.forget_user("cli-user")
    client.delete_items([8_000_000 + i for i in range(5)])
