"""VectorIndex: FAISS nearest-neighbour search over stable 64-bit item ids (no faiss type leaks out)."""

from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)


def checked_batch(ids, vectors, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """int64 ids and contiguous float32 vectors of `dim`, one per id, or a ValueError."""
    ids = np.asarray(ids, dtype=np.int64)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(ids) != len(vectors) or (len(ids) and vectors.shape[1] != dim):
        raise ValueError(f"expected {len(ids)} vectors of dim {dim}, got {vectors.shape}")
    return ids, vectors


class VectorIndex(Protocol):
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> int: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def __len__(self) -> int: ...

    def save(self, folder: Path, version: int, extra_meta: dict | None = None) -> None: ...


def scores_are_exact(factory: str) -> bool:
    """Whether an index of this factory string keeps every vector in full (Flat, HNSW32,
    IVF1024,Flat) rather than compressed (PQ, SQ, LSH, residual quantizers)."""
    return re.search(r"PQ|SQ|LSH|RQ|LSQ|RaBitQ", factory, re.IGNORECASE) is None


class FaissIndex:
    """Inner-product FAISS index from a factory string ("Flat", "HNSW32", "IVF256,Flat", ...).

    Vectors live in FAISS (inside an IndexIDMap) under increasing internal ids; a mapping gives
    each its item id. That keeps item ids stable and arbitrary (any int64) and lets indexes that
    cannot delete (HNSW, some GPU indexes) still support remove and update: where FAISS refuses
    remove_ids the old internal id is only dropped from the mapping and filtered out of results.
    `dead` counts such leftovers; a rebuild from the store compacts them.
    Thread-safe: search runs in worker threads off the event loop.
    """

    def __init__(self, dim: int, factory: str = "Flat", nprobe: int = 16, ef_search: int = 64, use_gpu: str = "auto"):
        import faiss

        from bertrec.workers.faiss_gpu import gpu_available

        self.dim = dim
        self.factory = factory
        self.nprobe = nprobe
        self.ef_search = ef_search
        self.gpus = gpu_available(use_gpu)
        self._faiss = faiss
        self._lock = threading.RLock()
        base = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        # IVF indexes carry ids themselves (and IDMap's remove breaks on them); others get a map.
        self._cpu_index = base if faiss.try_extract_index_ivf(base) is not None else faiss.IndexIDMap(base)
        self._index = self._cpu_index
        self._item_of_internal = np.empty(0, dtype=np.int64)  # internal id -> item id (-1 = dead)
        self._internal_of_item: dict[int, int] = {}
        self._supports_remove = True
        self.dead = 0
        self._apply_search_params()
        self._maybe_to_gpu()  # indexes that need no training (Flat, HNSW) move now, IVF after training

    @property
    def device(self) -> str:
        return f"cuda x{self.gpus}" if self.gpus else "cpu"

    @property
    def exact_scores(self) -> bool:
        """True when search scores are exact inner products of the stored vectors (CPU indexes that
        keep vectors in full), so nothing needs re-scoring; GPU copies keep float16."""
        return scores_are_exact(self.factory) and not self.gpus

    def _apply_search_params(self) -> None:
        faiss = self._faiss
        ivf = faiss.try_extract_index_ivf(self._cpu_index)
        if ivf is not None:
            ivf.nprobe = self.nprobe
        inner = self._cpu_index.index if isinstance(self._cpu_index, faiss.IndexIDMap) else self._cpu_index
        hnsw = getattr(faiss.downcast_index(inner), "hnsw", None)
        if hnsw is not None:
            hnsw.efSearch = self.ef_search

    def _maybe_to_gpu(self) -> None:
        if self.gpus and self._index is self._cpu_index and self._cpu_index.is_trained:
            from bertrec.workers.faiss_gpu import to_gpu

            try:
                self._index = to_gpu(self._cpu_index, self.gpus)
            except RuntimeError as exc:  # e.g. HNSW has no GPU implementation
                logger.warning("index %s stays on CPU: %s", self.factory, exc)
                self.gpus = 0

    def __len__(self) -> int:
        return len(self._internal_of_item)

    def __contains__(self, item_id: int) -> bool:
        return int(item_id) in self._internal_of_item

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert or replace the vectors of `ids` (an id present twice keeps its last vector)."""
        ids, vectors = checked_batch(ids, vectors, self.dim)
        if not len(ids):
            return
        # Keep only the last occurrence of a repeated id.
        _, last = np.unique(ids[::-1], return_index=True)
        keep = np.sort(len(ids) - 1 - last)
        ids, vectors = ids[keep], vectors[keep]
        with self._lock:
            self.remove(ids)
            if not self._cpu_index.is_trained:
                self._train(vectors)
            start = len(self._item_of_internal)
            self._index.add_with_ids(vectors, np.arange(start, start + len(ids), dtype=np.int64))
            self._item_of_internal = np.concatenate([self._item_of_internal, ids])
            for offset, item_id in enumerate(ids.tolist()):
                self._internal_of_item[item_id] = start + offset

    def _train(self, vectors: np.ndarray) -> None:
        ivf = self._faiss.try_extract_index_ivf(self._cpu_index)
        needed = ivf.nlist if ivf is not None else 1
        if len(vectors) < needed:
            raise ValueError(f"index {self.factory!r} needs at least {needed} vectors in its first batch to train")
        logger.info("training index %s on %d vectors", self.factory, len(vectors))
        self._cpu_index.train(vectors)
        self._maybe_to_gpu()

    def remove(self, ids: np.ndarray) -> int:
        """Drop `ids`; unknown ids are ignored. Returns how many were present."""
        with self._lock:
            internal = [self._internal_of_item.pop(int(i)) for i in ids if int(i) in self._internal_of_item]
            if not internal:
                return 0
            internal_arr = np.asarray(internal, dtype=np.int64)
            self._item_of_internal[internal_arr] = -1
            if self._supports_remove:
                try:
                    self._index.remove_ids(internal_arr)
                    return len(internal)
                except RuntimeError:
                    self._supports_remove = False  # HNSW and friends: tombstones from now on
            self.dead += len(internal)
            return len(internal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, item ids) per query row; missing slots have id -1 and score -inf."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        with self._lock:
            total = self._index.ntotal
            self._check_search_width(k + self.dead)
            if total == 0 or k <= 0:
                return (
                    np.full((len(queries), max(k, 0)), -np.inf, np.float32),
                    np.full((len(queries), max(k, 0)), -1, np.int64),
                )
            # Over-fetch by the dead rows so k live results survive the filter.
            fetch = min(total, k + self.dead)
            scores, internal = self._index.search(queries, fetch)
            mapping = self._item_of_internal
        out_scores = np.full((len(queries), k), -np.inf, np.float32)
        out_ids = np.full((len(queries), k), -1, np.int64)
        for row in range(len(queries)):
            valid = internal[row] >= 0
            items = mapping[internal[row][valid]]
            row_scores = scores[row][valid]
            live = items >= 0
            items, row_scores = items[live][:k], row_scores[live][:k]
            out_ids[row, : len(items)] = items
            out_scores[row, : len(items)] = row_scores
        return out_scores, out_ids

    def _check_search_width(self, k: int) -> None:
        if self.gpus and k > 2048:  # FAISS GPU k limit
            raise ValueError("GPU index searches at most 2048 neighbours; lower candidate_pool_size")

    def ids(self) -> np.ndarray:
        return np.fromiter(self._internal_of_item.keys(), dtype=np.int64, count=len(self))

    # Snapshots: <folder>/index.faiss + ids.npy + meta.json; meta.json is written last, so a
    # half-written snapshot never looks valid.
    def save(self, folder: Path, version: int, extra_meta: dict | None = None) -> None:
        from bertrec.workers.faiss_gpu import to_cpu

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            cpu = self._cpu_index if self._index is self._cpu_index else to_cpu(self._index)
            meta_path = folder / "meta.json"
            meta_path.unlink(missing_ok=True)
            self._faiss.write_index(cpu, str(folder / "index.faiss.tmp"))
            np.save(folder / "ids.tmp.npy", self._item_of_internal)
            meta = {
                "version": version,
                "dim": self.dim,
                "factory": self.factory,
                "dead": self.dead,
                "supports_remove": self._supports_remove,
                **(extra_meta or {}),
            }
        (folder / "index.faiss.tmp").replace(folder / "index.faiss")
        (folder / "ids.tmp.npy").replace(folder / "ids.npy")
        tmp = folder / "meta.json.tmp"
        tmp.write_text(json.dumps(meta))
        tmp.replace(meta_path)

    @staticmethod
    def snapshot_meta(folder: Path) -> dict | None:
        meta_path = Path(folder) / "meta.json"
        try:
            return json.loads(meta_path.read_text())
        except (OSError, ValueError):
            return None

    @classmethod
    def load(cls, folder: Path, nprobe: int = 16, ef_search: int = 64, use_gpu: str = "auto") -> FaissIndex:
        import faiss

        folder = Path(folder)
        meta = cls.snapshot_meta(folder)
        if meta is None:
            raise FileNotFoundError(f"no index snapshot in {folder}")
        index = cls(meta["dim"], meta["factory"], nprobe=nprobe, ef_search=ef_search, use_gpu=use_gpu)
        index._cpu_index = faiss.read_index(str(folder / "index.faiss"))
        index._supports_remove = bool(meta.get("supports_remove", True))
        index._index = index._cpu_index
        index._item_of_internal = np.load(folder / "ids.npy")
        index._internal_of_item = {
            int(item): internal for internal, item in enumerate(index._item_of_internal.tolist()) if item >= 0
        }
        index.dead = int((index._item_of_internal < 0).sum())
        index._apply_search_params()
        index._maybe_to_gpu()
        return index
