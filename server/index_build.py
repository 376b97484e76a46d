"""Building a vector index from the store without holding the catalogue twice.

Vectors go in in slices, so beside the index there is never more than one slice (1M x 384
float32 is 1.5 GB per copy). An index that must be trained first (IVF, PQ) learns from a uniform
sample drawn in a first pass over the store, as large as FAISS would use anyway, then fills the
same way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

import numpy as np

from bertrec.store import Store
from bertrec.workers.index import training_sample_size

logger = logging.getLogger(__name__)

BUILD_ROWS = 65_536  # vectors per index add


class BuildableIndex(Protocol):
    def train(self, vectors: np.ndarray) -> None: ...

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...


def fill_index(
    index: BuildableIndex,
    store: Store,
    model: str,
    factory: str,
    dim: int,
    rows: int = BUILD_ROWS,
    sample_rows: int | None = None,
) -> None:
    """Add the store's vectors for `model`, `rows` at a time; train first if the index needs it,
    on `sample_rows` vectors (default: what the factory's k-means use, see training_sample_size)."""
    wanted = training_sample_size(factory, dim) if sample_rows is None else sample_rows
    if wanted:
        sample = reservoir_sample(store.iter_vectors(model), wanted)
        if len(sample):
            logger.info("index %s: training on a sample of %d stored vectors", factory, len(sample))
            index.train(sample)
            del sample
    ids: list[np.ndarray] = []
    vectors: list[np.ndarray] = []
    held = 0
    for batch_ids, batch_vectors in store.iter_vectors(model):
        ids.append(batch_ids)
        vectors.append(batch_vectors)
        held += len(batch_ids)
        if held >= rows:
            index.add(np.concatenate(ids), np.concatenate(vectors))
            ids, vectors, held = [], [], 0
    if ids:
        index.add(np.concatenate(ids), np.concatenate(vectors))


def reservoir_sample(batches: Iterable[tuple[np.ndarray, np.ndarray]], size: int, seed: int = 0) -> np.ndarray:
    """A uniform sample of `size` rows (all of them if fewer) from (ids, vectors) batches, holding
    no more than the sample: the store yields rows in id order, and ids can follow the catalogue's
    structure (a whole category loaded at once), so the first rows would be a biased sample."""
    rng = np.random.default_rng(seed)
    sample: np.ndarray | None = None
    seen = 0
    for _, vectors in batches:
        if sample is None:
            sample = np.empty((size, vectors.shape[1]), dtype=np.float32)
        take = min(max(size - seen, 0), len(vectors))
        sample[seen : seen + take] = vectors[:take]
        rest = vectors[take:]
        if len(rest):
            # Algorithm R, vectorised: row number t replaces a random slot with probability size / (t + 1).
            positions = np.arange(seen + take, seen + len(vectors))
            slots = rng.integers(0, positions + 1)
            keep = slots < size
            sample[slots[keep]] = rest[keep]  # repeated slots: the later row wins, as row by row
        seen += len(vectors)
    if sample is None:
        return np.empty((0, 0), dtype=np.float32)
    return sample[: min(seen, size)]
