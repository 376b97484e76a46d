"""Recommender._candidates: how wide it searches, on a real (exact) FAISS index; the catalogue
around it is a narrow stand-in: its `index`, `search` and a dict of vectors for a store."""

from __future__ import annotations

import asyncio

import numpy as np

from bertrec.config import ServerConfig
from bertrec.server.recommend import Recommender, _Wanted
from bertrec.workers.index import FaissIndex


class Catalog:
    def __init__(self, vectors: np.ndarray):
        self.index = FaissIndex(vectors.shape[1], "Flat", use_gpu="no")
        self.index.add(np.arange(1, len(vectors) + 1), vectors)
        self.widths: list[int] = []
        self.beside_search: list[bool] = []  # whether the work after each search came with it
        self.model = "m"
        self.store = VectorStore({i + 1: v for i, v in enumerate(vectors)})

    async def search(self, queries: np.ndarray, k: int, then=None):
        self.widths.append(k)
        self.beside_search.append(then is not None)
        found = self.index.search(queries, k)
        return found if then is None else then(*found)


class VectorStore:
    def __init__(self, vectors: dict[int, np.ndarray]):
        self.vectors = vectors
        self.reads: list[list[int]] = []
        self.keys = {"ann": 7}

    def history_key(self, user_id):
        return self.keys.get(user_id, 0)

    def get_vectors(self, ids, model):
        self.reads.append(list(ids))
        return {i: self.vectors[i] for i in ids if i in self.vectors}


def candidates(catalog: Catalog, vector: np.ndarray, pool: int, exclude: set[int], wanted=None, expect=None):
    recommender = Recommender(catalog, encoder=None, profiles=None, config=ServerConfig())
    excluded = np.array(sorted(exclude), np.int64)  # as Recommend passes them: sorted, distinct
    found = asyncio.run(recommender._candidates(vector, pool, excluded, (), None, wanted or _Wanted(), expect))
    return found.ids, found, found.scores


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def test_many_excluded_items_do_not_widen_the_first_search():
    rng = np.random.default_rng(0)
    catalog = Catalog(unit(rng.standard_normal((5000, 16))))
    query = unit(rng.standard_normal(16))
    exclude = set(range(1, 3001))  # a heavy user: 3,000 seen items, most far from the query
    ids, _, scores = candidates(catalog, query, 200, exclude)
    assert len(ids) == 200 and not exclude & set(ids)
    assert catalog.widths[0] == 400  # pool + at most one pool of excluded hits, not 3,200
    assert np.all(np.diff(scores) <= 1e-6)  # still in index order


def test_search_widens_when_excluded_items_fill_the_neighbourhood():
    rng = np.random.default_rng(1)
    centre = unit(rng.standard_normal(16))
    near = unit(centre + 0.05 * rng.standard_normal((1000, 16)))  # ids 1..1000: all seen
    far = unit(rng.standard_normal((4000, 16)))
    catalog = Catalog(np.concatenate([near, far]))
    exclude = set(range(1, 1001))
    ids, _, _ = candidates(catalog, centre, 200, exclude)
    assert len(ids) == 200 and min(ids) > 1000
    assert catalog.widths == [400, 1600]  # the first 400 hits were all seen: one wider search


def test_the_vectors_ranking_needs_are_read_once_beside_the_final_search():
    rng = np.random.default_rng(2)
    centre = unit(rng.standard_normal(16))
    near = unit(centre + 0.05 * rng.standard_normal((1000, 16)))  # ids 1..1000: all seen
    catalog = Catalog(np.concatenate([near, unit(rng.standard_normal((4000, 16)))]))
    ids, found, scores = candidates(catalog, centre, 200, set(range(1, 1001)), _Wanted(top_k=10))
    assert catalog.widths == [400, 1600]
    assert catalog.store.reads == [found.top]  # only the widened search's top 10, once
    assert catalog.beside_search == [True, True]  # short work: done in the search's own thread
    assert found.top == ids[:10]  # exact index: the top 10 by score lead the pool
    assert set(found.vectors) == set(found.top)
    _, pooled, _ = candidates(catalog, centre, 200, set(), _Wanted(pool=True))
    assert catalog.store.reads[-1] == pooled.ids and pooled.top is None
    assert catalog.beside_search[-1] is False  # the whole pool: a thread of its own


def test_a_search_made_with_a_stale_profile_is_flagged_and_reads_nothing():
    rng = np.random.default_rng(3)
    catalog = Catalog(unit(rng.standard_normal((1000, 16))))
    query = unit(rng.standard_normal(16))
    _, current, _ = candidates(catalog, query, 50, set(), _Wanted(top_k=10), expect=("ann", 7))
    assert not current.stale and len(current.top) == 10 and catalog.store.reads == [current.top]
    _, stale, _ = candidates(catalog, query, 50, set(), _Wanted(top_k=10), expect=("ann", 6))
    assert stale.stale and stale.ids == [] and stale.vectors is None
    assert len(catalog.store.reads) == 1 and catalog.widths == [50, 50]  # no second read, no widening
