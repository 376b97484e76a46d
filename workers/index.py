"""VectorIndex: FAISS nearest-neighbour search over stable 64-bit item ids (no faiss type leaks out)."""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import threading
from pathlib import Path
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)

GPU_MAX_K = 2048  # FAISS GPU limit on k, and on nprobe
# Auto search breadth (IndexConfig.nprobe / ef_search = 0), from the index size rounded up to a
# power of two: nprobe = 2 * nlist^(2/3), but all lists up to EXHAUSTIVE_ITEMS vectors (exact);
# efSearch = sqrt(size / 2), at least 128. Fitted to the cheapest settings with recall@10 >= 0.95
# in BENCHMARKS.md (bench/index.py), for perturbed items and user vectors alike: IVF 128 of 512
# lists at 20k items, 512 of 4096 at 1M; HNSW32 efSearch 128 at 20k (64: 0.948), 256 at 100k
# (0.984; 128: 0.948 for perturbed items), 725 at 1M (0.964, users 0.951; 512: 0.949).
EXHAUSTIVE_ITEMS = 16_384
MIN_EF_SEARCH = 128


def size_step(size: int) -> int:
    """`size` rounded up to a power of two (at least 1): the auto settings change only at these steps."""
    return 1 << max(0, int(size) - 1).bit_length()


def auto_nprobe(nlist: int, size: int) -> int:
    """IVF lists to visit for recall@10 >= ~0.95 in an index of `size` vectors over `nlist` lists."""
    by_lists = math.ceil(round(2 * nlist ** (2 / 3), 6))
    by_size = -(-nlist * EXHAUSTIVE_ITEMS // size_step(size))
    return max(1, min(nlist, max(by_lists, by_size)))


def auto_ef_search(size: int) -> int:
    """HNSW efSearch for recall@10 >= ~0.95 in an index of `size` vectors: ceil(sqrt(step / 2)), >= 128."""
    return max(MIN_EF_SEARCH, math.isqrt(max(0, size_step(size) // 2 - 1)) + 1)


def describe_breadth(breadth: dict[str, int], nprobe: int, ef_search: int) -> str:
    """'nprobe 512 (auto)' / 'ef_search 300' for the log, given the configured values (0 = auto)."""
    configured = {"nprobe": nprobe, "ef_search": ef_search}
    parts = [f"{name} {value}{'' if configured[name] else ' (auto)'}" for name, value in breadth.items()]
    return ", ".join(parts) or "exhaustive search"


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


@functools.lru_cache(maxsize=64)  # asked on every Recommend call
def scores_are_exact(factory: str) -> bool:
    """Whether an index of this factory string keeps every vector in full (Flat, HNSW32,
    IVF1024,Flat) rather than compressed (PQ, SQ, LSH, residual quantizers)."""
    return re.search(r"PQ|SQ|LSH|RQ|LSQ|RaBitQ", factory, re.IGNORECASE) is None


def needs_no_training(factory: str, dim: int) -> bool:
    """Whether an empty index of this factory string takes vectors without training first (Flat,
    HNSW: yes; IVF, PQ: no)."""
    return training_sample_size(factory, dim) == 0


# FAISS's k-means learns from at most 256 points per centroid (it subsamples beyond that), and a
# PQ codebook has 256 centroids per sub-quantizer.
POINTS_PER_CENTROID = 256


@functools.lru_cache(maxsize=32)
def training_sample_size(factory: str, dim: int) -> int:
    """How many vectors an index of this factory usefully trains on; 0 if it needs no training."""
    import faiss

    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if index.is_trained:
        return 0
    ivf = faiss.try_extract_index_ivf(index)
    nlist = ivf.nlist if ivf is not None else 1
    return POINTS_PER_CENTROID * max(nlist, 256)


class FaissIndex:
    """Inner-product FAISS index from a factory string ("Flat", "HNSW32", "IVF256,Flat", ...).

    Vectors live in FAISS (inside an IndexIDMap) under increasing internal ids; a mapping gives
    each its item id. That keeps item ids stable and arbitrary (any int64) and lets indexes that
    cannot delete (HNSW, some GPU indexes) still support remove and update: where FAISS refuses
    remove_ids the old internal id is only dropped from the mapping and filtered out of results.
    `dead` counts such leftovers; a rebuild from the store compacts them.
    Thread-safe: search runs in worker threads off the event loop.
    """

    def __init__(self, dim: int, factory: str = "Flat", nprobe: int = 0, ef_search: int = 0, use_gpu: str = "auto"):
        import faiss

        from bertrec.workers.faiss_gpu import gpu_available

        self.dim = dim
        self.factory = factory
        self.nprobe = nprobe  # as configured; 0 = auto_nprobe of the current size
        self.ef_search = ef_search  # as configured; 0 = auto_ef_search of the current size
        self._breadth: dict[str, int] = {}  # the values in effect
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

    def search_breadth(self) -> dict[str, int]:
        """The search setting in effect: {"nprobe": n} (IVF), {"ef_search": n} (HNSW), {} (exact)."""
        return dict(self._breadth)

    def describe_search(self) -> str:
        return describe_breadth(self._breadth, self.nprobe, self.ef_search)

    def configure_search(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change the configured nprobe / ef_search (0 = auto, None = unchanged) and apply them."""
        with self._lock:
            self.nprobe = self.nprobe if nprobe is None else nprobe
            self.ef_search = self.ef_search if ef_search is None else ef_search
            self._apply_search_params()

    def _apply_search_params(self) -> None:
        """Set nprobe / efSearch: the configured value, or the auto rule at the current size."""
        faiss = self._faiss
        size = self._index.ntotal  # HNSW tombstones included: they are still in the graph
        breadth: dict[str, int] = {}
        ivf = faiss.try_extract_index_ivf(self._cpu_index)
        if ivf is not None:
            nprobe = min(self.nprobe or auto_nprobe(ivf.nlist, size), ivf.nlist)
            if self.gpus:
                nprobe = min(nprobe, GPU_MAX_K)
            ivf.nprobe = breadth["nprobe"] = nprobe
            if self._index is not self._cpu_index:  # the GPU copy took nprobe when it was made
                faiss.GpuParameterSpace().set_index_parameter(self._index, "nprobe", nprobe)
        inner = self._cpu_index.index if isinstance(self._cpu_index, faiss.IndexIDMap) else self._cpu_index
        hnsw = getattr(faiss.downcast_index(inner), "hnsw", None)
        if hnsw is not None:
            hnsw.efSearch = breadth["ef_search"] = self.ef_search or auto_ef_search(size)
        if breadth != self._breadth:
            self._breadth = breadth
            if size:
                logger.info("index %s at %d vectors searches with %s", self.factory, size, self.describe_search())

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
            self._apply_search_params()  # auto settings follow the size

    def train(self, vectors: np.ndarray) -> None:
        """Train an empty index that needs it (IVF, PQ) on a sample; a trained one ignores this.
        Without it, the first add trains on its own batch."""
        with self._lock:
            if not self._cpu_index.is_trained:
                self._train(np.ascontiguousarray(vectors, dtype=np.float32))

    def _train(self, vectors: np.ndarray) -> None:
        ivf = self._faiss.try_extract_index_ivf(self._cpu_index)
        needed = ivf.nlist if ivf is not None else 1
        if len(vectors) < needed:
            raise ValueError(f"index {self.factory!r} needs at least {needed} vectors in its first batch to train")
        logger.info(
            "training index %s on %d vectors (FAISS suggests about 4*sqrt(n) = %d lists for this many)",
            self.factory,
            len(vectors),
            round(4 * math.sqrt(len(vectors))),
        )
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
                    self._apply_search_params()  # the size shrank
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
        if self.gpus and k > GPU_MAX_K:
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
    def load(cls, folder: Path, nprobe: int = 0, ef_search: int = 0, use_gpu: str = "auto") -> FaissIndex:
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
