"""Building an index from the store: slices, never the whole catalogue at once; an index that
trains learns from a uniform sample first; every stored vector ends up in the index."""

from __future__ import annotations

import numpy as np
import pytest

from bertrec.server.index_build import fill_index, reservoir_sample
from bertrec.store.sqlite import SQLiteStore
from bertrec.types import Item
from bertrec.workers.index import FaissIndex, needs_no_training, training_sample_size

DIM = 16


class RecordingIndex(FaissIndex):
    """A real FaissIndex that remembers the size of each add and of its training sample."""

    def __init__(self, factory: str):
        super().__init__(DIM, factory, use_gpu="no")
        self.adds: list[int] = []
        self.trained_on: list[int] = []

    def train(self, vectors):
        self.trained_on.append(len(vectors))
        super().train(vectors)

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
    assert training_sample_size("Flat", DIM) == training_sample_size("HNSW32", DIM) == 0
    assert training_sample_size("IVF1024,Flat", DIM) == 256 * 1024  # FAISS's cap per centroid
    assert training_sample_size("IVF16,PQ4np", DIM) == 256 * 256  # the PQ codebooks' 256 centroids


@pytest.mark.parametrize("factory", ["Flat", "HNSW32"])
def test_untrained_indexes_are_filled_in_slices(store, factory):
    s, vectors = store
    index = RecordingIndex(factory)
    fill_index(index, s, "m", factory, DIM, rows=3000)
    assert len(index.adds) > 1 and max(index.adds) < 3000 + 4096  # a slice, plus at most one store page
    assert sum(index.adds) == len(index) == 10_000
    _, found = index.search(vectors[:20], 1)
    assert (found[:, 0] == np.arange(1, 21)).mean() >= 0.95


@pytest.mark.parametrize("factory", ["IVF16,Flat", "IVF16,PQ4np"])
def test_an_index_that_trains_learns_from_a_sample_then_fills_in_slices(store, factory):
    s, vectors = store
    index = RecordingIndex(factory)
    fill_index(index, s, "m", factory, DIM, rows=3000, sample_rows=2000)
    assert index.trained_on == [2000]
    assert len(index.adds) > 1 and max(index.adds) < 3000 + 4096
    assert sum(index.adds) == len(index) == 10_000
    index.configure_search(nprobe=16)  # every list: exact over the stored codes
    _, found = index.search(vectors[:20], 1)
    assert (found[:, 0] == np.arange(1, 21)).mean() >= (0.95 if factory == "IVF16,Flat" else 0.5)


def test_too_few_vectors_to_train_is_a_clear_error(tmp_path):
    s = SQLiteStore(tmp_path)
    items = [Item(id=i, text=f"item {i}") for i in range(1, 6)]
    s.upsert_items(items, {i.id: np.eye(DIM, dtype=np.float32)[i.id] for i in items}, "m")
    with pytest.raises(ValueError, match="at least 16 vectors"):
        fill_index(RecordingIndex("IVF16,Flat"), s, "m", "IVF16,Flat", DIM)


def test_reservoir_sample_is_uniform_over_every_batch():
    rows = np.arange(10_000, dtype=np.float32)[:, None]
    batches = [(np.arange(a, a + 4096), rows[a : a + 4096]) for a in range(0, 10_000, 4096)]
    sample = reservoir_sample(batches, 1000, seed=1)[:, 0]
    assert len(sample) == len(set(sample.tolist())) == 1000  # drawn without repeats
    assert 4500 < sample.mean() < 5500  # the mean row of 0..9999 is 5000; the first 1000 would give 500
    assert (sample >= 8192).sum() > 100  # the last batch is represented (~18% of rows)
    small = reservoir_sample(batches[:1], 5000)
    assert np.array_equal(small[:, 0], rows[:4096, 0])  # fewer rows than asked: all of them
    assert reservoir_sample([], 10).shape[0] == 0
