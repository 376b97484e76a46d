"""The cross-encoder re-ranker with the real packaged MiniLM on a 300-movie slice: its loss falls on
the training lists, a saved folder scores the same after loading, the offline cascade method ranks
every candidate, and a server started with the folder re-ranks through the cascade."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bertrec.client import Client
from bertrec.evaluation import pipeline
from bertrec.evaluation.methods import TrainData
from bertrec.evaluation.pipeline import CrossEncoderPipeline, validation_lists
from bertrec.evaluation.runner import run_method
from bertrec.evaluation.splits import Split, warm_split
from bertrec.fingerprint import model_fingerprint
from bertrec.rerank.cross_encoder import (
    CrossEncoder,
    CrossEncoderTraining,
    batch_loss,
    history_text,
    sample_list,
    train_cross_encoder,
)
from bertrec.rerank.loading import load_reranker
from bertrec.rerank.training import RerankTraining
from bertrec.types import Stage
from bertrec.workers.encoder import default_model_path
from tests.integration.helpers import ingest_and_wait_for_reranker, make_config, slice_dataset

pytestmark = pytest.mark.integration

ITEMS = 300
FUSION = RerankTraining(members=1, epochs=6, patience=3)
CROSS = CrossEncoderTraining(
    steps=6, lists_per_step=2, negatives=5, max_length=48, history_items=4, top_n=8, mix_lists=6, device="cpu"
)


@pytest.fixture(scope="module")
def slice_data():
    return slice_dataset(ITEMS)


@pytest.fixture(scope="module")
def lists(slice_data):
    ds, vectors, _ = slice_data
    return validation_lists(TrainData.build(ds), vectors, FUSION, 0)


@pytest.fixture(scope="module")
def few_lists(lists):
    """Every training below sees these 240 lists (of the slice's ~1,300): the test is about the
    mechanics, and fusion training time grows with the lists."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "validation_lists", lambda *args, **kwargs: lists.subset(np.arange(0, 1200, 5)))
        yield


@pytest.fixture(scope="module")
def folder(slice_data, few_lists, tmp_path_factory):
    ds, vectors, _ = slice_data
    out = tmp_path_factory.mktemp("ce") / "ce"
    card = pipeline.train_for_serving(ds, vectors, str(out), model_fingerprint(default_model_path()), FUSION, 0, CROSS)
    return out, card


def test_loss_falls_on_the_training_lists(slice_data, lists):
    ds, _, _ = slice_data
    assert len(lists.histories) == len(lists.cols) and all(len(h) for h in lists.histories)
    few = lists.subset(np.arange(6))
    texts = [i.text for i in ds.items]
    config = CrossEncoderTraining(steps=10, lists_per_step=3, negatives=7, max_length=48, lr=1e-4, device="cpu")
    fixed = [sample_list(few, i, texts, config, np.random.default_rng(i)) for i in range(6)]
    torch.manual_seed(0)
    model = CrossEncoder.from_pretrained(max_length=48, history_items=config.history_items)
    model.eval()
    with torch.no_grad():
        before = float(batch_loss(model, fixed))
    summary = train_cross_encoder(model, few, texts, config)
    with torch.no_grad():
        after = float(batch_loss(model, fixed))
    assert after < before, (before, after, summary["losses"])
    assert summary["lists"] == 6 and len(summary["losses"]) == 10


def test_folder_loads_by_kind_and_scores_the_same(folder, slice_data):
    ds, _, _ = slice_data
    out, card = folder
    assert card["kind"] == "cross-encoder" and (out / "encoder" / "config.json").exists()
    assert card["summary"]["mix"]["lists"] >= 0 and card["summary"]["cross_encoder"]["steps"] == CROSS.steps
    loaded = load_reranker(out)
    assert loaded.kind == "cross-encoder" and loaded.cascade is not None
    assert loaded.fusion_card["encoder"] == card["encoder"] and loaded.fusion_card["dim"] == 384
    texts = [i.text for i in ds.items[:6]]
    history = history_text(texts[:3], 4)
    again = load_reranker(out).cascade.cross_encoder.score(history, texts[3:])
    np.testing.assert_allclose(loaded.cascade.cross_encoder.score(history, texts[3:]), again, rtol=1e-5, atol=1e-5)
    assert load_reranker(out / "fusion").kind == "fusion"  # the first stage is a fusion folder itself


def test_cascade_method_ranks_every_candidate(slice_data, few_lists):
    ds, vectors, _ = slice_data
    split = warm_split(ds)
    users = sorted(split.test)[:25]  # a BERT pass per (user, top-N item): keep the test short
    small = Split(split.name, split.train, {u: split.test[u] for u in users}, split.candidate_ids, split.seed)
    method = CrossEncoderPipeline(vectors, FUSION, cross_encoder=CROSS)
    result = run_method(method, small)
    assert len(result.users) == 25 and np.isfinite(result.mean("ndcg@10"))
    data = TrainData.build(small.train)
    rows = np.array([data.row[u] for u in users[:3]])
    scores = method.score(rows)
    assert scores.shape == (3, len(ds.items)) and np.isfinite(scores).all()
    method.rescore = lambda ranked: [fusion for *_, fusion in ranked]  # the first stage alone
    first = method.score(rows)
    for n in range(len(rows)):
        # the fusion model's top-N lead the final list, in the cross-encoder mix's order
        top = set(np.argsort(-first[n])[: CROSS.top_n].tolist())
        assert set(np.argsort(-scores[n])[: CROSS.top_n].tolist()) == top


def test_server_reranks_with_a_cross_encoder_folder(folder, slice_data, ray_cluster, server_thread_factory, tmp_path):
    ds, _, ratings = slice_data
    out, _ = folder
    rerank = {"path": str(out), "collaborative_candidates": 20, "refit_interval_s": 0.5, "cross_encoder_top_n": 8}
    server = server_thread_factory(make_config(tmp_path / "data", rerank=rerank))
    client = Client(server.target, timeout_s=120)
    try:
        server.wait_ready(client)
        ingest_and_wait_for_reranker(client, server, ds.items, ratings)
        assert client.info().reranker_ready
        cascade = server.state.reranker.cascade
        assert cascade is not None and server.state.reranker.kind == "cross-encoder"
        calls: list[tuple[str, list[str]]] = []
        score = cascade.cross_encoder.score

        def recorded(history: str, items: list[str]):
            calls.append((history, list(items)))
            return score(history, items)

        cascade.cross_encoder.score = recorded

        staged = list(client.recommend("1", k=10, retrieval_first=True))
        assert [s.stage for s in staged] == [Stage.RETRIEVAL] * 10 + [Stage.RERANKED] * 10
        reranked = staged[10:]
        assert all(a.score >= b.score for a, b in zip(reranked, reranked[1:]))
        seen = {r.item_id for r in ratings if r.user_id == "1"}
        assert not seen & {s.item_id for s in reranked}
        # The cross-encoder saw the user's latest liked titles and only the fusion top-8, by text.
        (history, items), *_ = calls
        liked = [r for r in sorted(ratings, key=lambda r: r.timestamp) if r.user_id == "1" and r.weight > 0]
        titles = {i.id: i.text for i in ds.items}
        assert history.split(" ; ")[0] == titles[liked[-1].item_id] and len(items) == 8

        texts = list(client.rerank("1", texts=["Toy Story 3 (2010)", "An obscure documentary about soil (2019)"]))
        assert {s.stage for s in texts} == {Stage.RERANKED} and len(texts) == 2
        assert sorted(calls[-1][1]) == ["An obscure documentary about soil (2019)", "Toy Story 3 (2010)"]
        candidates = [s.item_id for s in staged[:10]]
        rescored = list(client.rerank("1", item_ids=candidates))
        assert {s.stage for s in rescored} == {Stage.RERANKED}
        assert sorted(s.item_id for s in rescored) == sorted(candidates)
    finally:
        client.close()
        server.stop()
