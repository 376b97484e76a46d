"""Building an index from the store: slices for indexes that need no training, one batch (the
training sample) for those that do; every stored vector ends up in the index either way."""

from __future__ import annotations

import numpy as np
import pytest

from bertrec.server.catalog import fill_index
from bertrec.store.sqlite import SQLiteStore
from bertrec.types import Item
from bertrec.workers.index import FaissIndex, needs_no_training

DIM = 16


class RecordingIndex(FaissIndex):
    """A real FaissIndex that remembers the size of each add."""

    def __init__(self, factory: str):
        super().__init__(DIM, factory, use_gpu="no")
        self.adds: list[int] = []

    def add(self, ids, vectors):
        self.adds.append(len(ids))
        super().add(ids, vectors)


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(10_000, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    items = [Item(id=i, text=f"item {i}") for i in range(1, 10_001)]
    s = SQLiteStore(tmp_path)
    s.upsert_items(items, {i.id: v for i, v in zip(items, vectors)}, "m")
    return s, vectors


def test_factories_that_need_training_are_told_apart():
    assert needs_no_training("Flat", DIM) and needs_no_training("HNSW32", DIM)
    assert not needs_no_training("IVF16,Flat", DIM) and not needs_no_training("IVF16,PQ4np", DIM)


@pytest.mark.parametrize("factory", ["Flat", "HNSW32"])
def test_untrained_indexes_are_filled_in_slices(store, factory):
    s, vectors = store
    index = RecordingIndex(factory)
    fill_index(index, s, "m", factory, DIM, rows=3000)
    assert len(index.adds) > 1 and max(index.adds) < 3000 + 4096  # a slice, plus at most one store page
    assert sum(index.adds) == len(index) == 10_000
    _, found = index.search(vectors[:20], 1)
    assert (found[:, 0] == np.arange(1, 21)).mean() >= 0.95


def test_an_index_that_trains_gets_everything_at_once(store):
    s, vectors = store
    index = RecordingIndex("IVF16,Flat")
    fill_index(index, s, "m", "IVF16,Flat", DIM, rows=3000)
    assert index.adds == [10_000] and len(index) == 10_000
