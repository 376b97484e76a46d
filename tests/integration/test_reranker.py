"""Train -> evaluate -> serve, end to end on a slice of MovieLens: the fusion re-ranker trained on
real interactions beats a random order offline, then the server uses it for Recommend and Rerank
and can stream the retrieval stage before the re-ranked one."""

from __future__ import annotations

import pytest

from bertrec.client import Client
from bertrec.evaluation.methods import Popularity, Random
from bertrec.evaluation.pipeline import RerankPipeline, train_for_serving
from bertrec.evaluation.runner import run_method
from bertrec.evaluation.splits import warm_split
from bertrec.fingerprint import model_fingerprint
from bertrec.rerank.training import RerankTraining
from bertrec.types import Stage
from bertrec.workers.encoder import default_model_path
from tests.integration.helpers import ingest_and_wait_for_reranker, make_config, slice_dataset

pytestmark = pytest.mark.integration

SMALL = RerankTraining(members=1, epochs=12, patience=4)


@pytest.fixture(scope="module")
def slice_data():
    return slice_dataset()


def test_pipeline_beats_random_and_popularity_offline(slice_data):
    ds, vectors, _ = slice_data
    split = warm_split(ds)
    pipeline = run_method(RerankPipeline(vectors, SMALL), split)
    random = run_method(Random(), split)
    popularity = run_method(Popularity(), split)
    assert pipeline.mean("ndcg@10") > 2 * random.mean("ndcg@10")
    assert pipeline.mean("ndcg@10") > popularity.mean("ndcg@10")


def test_trained_reranker_serves(slice_data, ray_cluster, server_thread_factory, tmp_path):
    ds, vectors, ratings = slice_data
    card = train_for_serving(ds, vectors, str(tmp_path / "rr"), model_fingerprint(default_model_path()), SMALL)
    assert card["summary"]["lists"] > 100
    rerank = {"path": str(tmp_path / "rr"), "collaborative_candidates": 50, "refit_interval_s": 0.5}
    config = make_config(tmp_path / "data", rerank=rerank)
    server = server_thread_factory(config)
    client = Client(server.target, timeout_s=120)
    try:
        server.wait_ready(client)
        ingest_and_wait_for_reranker(client, server, ds.items, ratings)
        info = client.info()
        assert info.reranker == "rr" and info.reranker_ready

        staged = list(client.recommend("1", k=10, retrieval_first=True))
        assert [s.stage for s in staged] == [Stage.RETRIEVAL] * 10 + [Stage.RERANKED] * 10
        retrieval, reranked = staged[:10], staged[10:]
        assert [s.rank for s in reranked] == list(range(1, 11))
        assert all(a.score >= b.score for a, b in zip(reranked, reranked[1:]))
        assert {s.item_id for s in retrieval} != {s.item_id for s in reranked}
        seen = {r.item_id for r in ratings if r.user_id == "1"}
        assert not seen & {s.item_id for s in reranked}
        # Without retrieval_first only the re-ranked list comes back, the same one.
        plain = list(client.recommend("1", k=10))
        assert [s.item_id for s in plain] == [s.item_id for s in reranked]

        # Rerank uses the trained model too; raw texts (no column in the signals) are scored as cold items.
        candidates = [s.item_id for s in retrieval]
        rescored = list(client.rerank("1", item_ids=candidates))
        assert {s.stage for s in rescored} == {Stage.RERANKED}
        assert sorted(s.item_id for s in rescored) == sorted(candidates)
        texts = list(client.rerank("1", texts=["Toy Story 3 (2010)", "An obscure documentary about soil (2019)"]))
        assert {s.stage for s in texts} == {Stage.RERANKED} and len(texts) == 2
    finally:
        client.close()
        server.stop()
