"""Loaders (MovieLens, generic CSV / JSONL / Parquet) and the deterministic splits."""

import json

import numpy as np

from bertrec.evaluation.data import Dataset, load_generic, load_movielens, render_text
from bertrec.evaluation.splits import cold_item_split, low_resource_split, warm_split
from bertrec.movielens import bundled_path
from bertrec.types import Item


def test_movielens_loader_and_templates():
    ds = load_movielens(bundled_path(), template="title")
    assert len(ds.items) == 9742 and len(ds.users) == 100836
    toy = next(i for i in ds.items if i.id == 1)
    assert toy.text == "Toy Story (1995)" and toy.metadata["year"] == 1995
    assert "Animation" in toy.metadata["genres"] and toy.metadata["tags"]
    rich = render_text("title_genres_tags", toy.metadata)
    assert rich.startswith("Toy Story (1995). Adventure, Animation") and "pixar" in rich
    assert ds.positive.sum() == (ds.weights >= 4).sum()


def test_generic_loader_csv_jsonl_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    items = [{"id": 1, "text": "alpha", "metadata": json.dumps({"k": "v"})}, {"id": 2, "text": "beta", "metadata": ""}]
    events = [{"user_id": "u1", "item_id": 1, "timestamp": 5, "weight": 2}, {"user_id": "u1", "item_id": 2}]
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(i) for i in items))
    (tmp_path / "events.csv").write_text("user_id,item_id,timestamp,weight\nu1,1,5,2\nu1,2,,\n")
    pq.write_table(pa.Table.from_pylist(events), tmp_path / "events.parquet")
    for events_file in ("events.csv", "events.parquet"):
        ds = load_generic(tmp_path / "items.jsonl", tmp_path / events_file)
        assert [i.text for i in ds.items] == ["alpha", "beta"] and ds.items[0].metadata == {"k": "v"}
        assert ds.item_ids.tolist() == [1, 2] and ds.weights.tolist() == [2.0, 1.0]
        assert ds.positive.all()


def _toy(n_users=20, n_items=50, per_user=12, seed=0):
    rng = np.random.default_rng(seed)
    users, items, ts, w = [], [], [], []
    for u in range(n_users):
        for j, item in enumerate(rng.choice(n_items, per_user, replace=False)):
            users.append(f"u{u}")
            items.append(int(item) + 1)
            ts.append(float(j))
            w.append(5.0 if j % 3 else 2.0)
    catalogue = [Item(i, f"item {i}") for i in range(1, n_items + 1)]
    return Dataset(catalogue, np.array(users), np.array(items), np.array(ts), np.array(w, np.float32), 4.0)


def test_warm_split_holds_out_the_last_fifth_and_nothing_later():
    ds = _toy()
    split = warm_split(ds)
    for user, held in split.test.items():
        mine = (ds.users == user) & ds.positive
        positives = ds.item_ids[mine][np.argsort(ds.timestamps[mine])]
        assert held == set(positives[-int(np.ceil(0.2 * len(positives))) :].tolist())
        train_ts = split.train.timestamps[split.train.users == user]
        first_test_ts = min(ds.timestamps[(ds.users == user) & np.isin(ds.item_ids, list(held))])
        assert (train_ts < first_test_ts).all()
    assert warm_split(ds).test == split.test  # deterministic


def test_cold_split_removes_items_from_training():
    ds = _toy()
    a, b = cold_item_split(ds, seed=1), cold_item_split(ds, seed=1)
    assert np.array_equal(a.candidate_ids, b.candidate_ids)
    assert not np.isin(a.train.item_ids, a.candidate_ids).any()
    assert all(items <= set(a.candidate_ids.tolist()) for items in a.test.values())
    assert not np.array_equal(cold_item_split(ds, seed=2).candidate_ids, a.candidate_ids)


def test_low_resource_keeps_a_tenth_of_training():
    ds = _toy(n_users=200)
    warm, low = warm_split(ds), low_resource_split(ds, seed=3)
    assert 0.05 < len(low.train.users) / len(warm.train.users) < 0.15
    assert set(low.test) <= set(warm.test)
