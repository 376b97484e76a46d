"""Recommender._candidates: how wide it searches, on a real (exact) FAISS index; the catalogue
around it is a narrow stand-in: without filters only its `index` and `search` are used."""

from __future__ import annotations

import asyncio

import numpy as np

from bertrec.config import ServerConfig
from bertrec.server.recommend import Recommender
from bertrec.workers.index import FaissIndex


class Catalog:
    def __init__(self, vectors: np.ndarray):
        self.index = FaissIndex(vectors.shape[1], "Flat", use_gpu="no")
        self.index.add(np.arange(1, len(vectors) + 1), vectors)
        self.widths: list[int] = []

    async def search(self, queries: np.ndarray, k: int):
        self.widths.append(k)
        return self.index.search(queries, k)


def candidates(catalog: Catalog, vector: np.ndarray, pool: int, exclude: set[int]):
    recommender = Recommender(catalog, encoder=None, profiles=None, config=ServerConfig())
    excluded = np.array(sorted(exclude), np.int64)  # as Recommend passes them: sorted, distinct
    return asyncio.run(recommender._candidates(vector, pool, excluded, (), None))


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
