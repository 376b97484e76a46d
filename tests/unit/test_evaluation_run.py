"""A small evaluation end to end: tuned baselines on the same splits, report files, determinism."""

import json

import numpy as np

from bertrec.evaluation.experiment import run_evaluation
from bertrec.evaluation.methods import EASE, ItemKNN, Popularity, TrainData
from bertrec.evaluation.runner import run_method
from bertrec.evaluation.splits import warm_split
from tests.unit.test_evaluation_data import _toy


def test_run_evaluation_writes_reports(tmp_path):
    ds = _toy(n_users=60, n_items=40, per_user=15)
    summary = run_evaluation(
        ds, ["warm", "cold"], ["random", "popularity", "itemknn", "ease"], seeds=2, out_dir=tmp_path
    )
    assert set(summary) == {"warm", "cold"}
    assert summary["cold"]["ease"]["seeds"] == [0, 1] and summary["warm"]["ease"]["seeds"] == [0]
    for name in ("evaluation.json", "evaluation.md", "evaluation.png"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["params"]["warm"]["itemknn"]["k"] in (20, 50, 100, 200)
    assert "| popularity |" in (tmp_path / "evaluation.md").read_text()
    again = run_evaluation(ds, ["warm"], ["itemknn"], seeds=1, out_dir=tmp_path / "again")
    assert again["warm"]["itemknn"]["ndcg@10"] == summary["warm"]["itemknn"]["ndcg@10"]


def test_collaborative_methods_learn_a_planted_structure():
    # Two user groups that like disjoint item halves: neighbours must beat popularity.
    rng = np.random.default_rng(0)
    users, items, ts, w = [], [], [], []
    for u in range(80):
        half = np.arange(1, 21) if u % 2 else np.arange(21, 41)
        for j, item in enumerate(rng.permutation(half)[:12]):
            users.append(f"u{u}")
            items.append(int(item))
            ts.append(float(j))
            w.append(5.0)
    from bertrec.evaluation.data import Dataset
    from bertrec.types import Item

    ds = Dataset(
        [Item(i, f"item {i}") for i in range(1, 41)],
        np.array(users),
        np.array(items),
        np.array(ts),
        np.array(w, np.float32),
        4.0,
    )
    split = warm_split(ds)
    data = TrainData.build(split.train)
    pop = run_method(Popularity(), split, data).mean("ndcg@10")
    knn = run_method(ItemKNN(k=10), split, data).mean("ndcg@10")
    ease = run_method(EASE(l2=10.0), split, data).mean("ndcg@10")
    assert knn > pop + 0.2 and ease > pop + 0.2
