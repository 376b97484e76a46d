"""ShardedIndex: the VectorIndex spread over IndexShard Ray actors, items routed to shards by id."""

from __future__ import annotations

import fcntl
import json
import logging
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bertrec.config import IndexConfig
from bertrec.errors import WorkerLost
from bertrec.workers.index import FaissIndex, checked_batch, describe_breadth, scores_are_exact

logger = logging.getLogger(__name__)

# A shard keeps the table being served and one more (a model swap builds the next one beside it),
# and as many unfinished builds; older ones are dropped (a failed swap must not leak an index).
MAX_TABLES = 2
BUILD_MARK = "~build-"
# Concurrent calls per shard actor: searches run in parallel (FAISS releases the GIL).
SHARD_CONCURRENCY = 8
# Query batches larger than this go through the object store once instead of once per shard.
PUT_QUERIES_BYTES = 100_000


def shard_of(ids: np.ndarray, shards: int) -> np.ndarray:
    """The shard of each id: a splitmix64 mix of the id, mod `shards`.

    Depends only on the id and the shard count (stable across processes and restarts); the mix
    spreads ids that share a stride (all multiples of N, say) instead of piling them on one shard.
    """
    z = np.asarray(ids, dtype=np.int64).astype(np.uint64)  # two's complement for negative ids
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(shards)).astype(np.int64)


def merge_top_k(scores: list[np.ndarray], ids: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard top-k lists into one top-k per query row.

    FaissIndex scores by inner product, so larger is better; empty slots (id -1, score -inf) sort last.
    """
    all_scores = np.concatenate(scores, axis=1)
    all_ids = np.concatenate(ids, axis=1)
    order = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(all_scores, order, 1), np.take_along_axis(all_ids, order, 1)


def shard_name(prefix: str, shard: int) -> str:
    return f"{prefix}-shard-{shard}"


def shard_folder(folder: Path, shard: int) -> Path:
    return Path(folder) / f"shard-{shard}"


class IndexShard:
    """One shard: FaissIndex tables by name. Created through `ray.remote(IndexShard)` by ShardedIndex.

    A table is what one front end serves (the catalog names it after the model). A new index is
    built in a private table and published under its name only when finished, so a rebuild or a
    model swap never empties a table that is serving, in this front end or another one.
    """

    def __init__(self, name: str, dim: int, config: IndexConfig):
        self.name = name
        self.dim = dim
        self.config = config
        self.tables: dict[str, FaissIndex] = {}  # published, oldest first
        self.builds: dict[str, tuple[int, FaissIndex]] = {}  # private: (serial, index)
        self.aliases: dict[str, str] = {}  # published build -> its table, for calls already in flight
        self._serial = 0
        self._lock = threading.Lock()  # the actor runs calls in several threads

    def _new(self) -> FaissIndex:
        # Auto nprobe / ef_search follow this shard's own size, not the total: a query searches
        # every shard for its own top k, and each shard is an index of its own size to search.
        c = self.config
        return FaissIndex(self.dim, c.factory, nprobe=c.nprobe, ef_search=c.ef_search, use_gpu=c.use_gpu)

    def _get(self, table: str) -> FaissIndex:
        with self._lock:
            if table in self.builds:
                return self.builds[table][1]
            index = self.tables.get(self.aliases.get(table, table))
        if index is None:
            # Restarted by Ray (it comes back empty), or the table was dropped after newer ones
            # were published: either way the caller's index is incomplete and must be rebuilt.
            raise WorkerLost(f"index shard {self.name} has no table {table!r}: it restarted or the table was replaced")
        return index

    def _publish(self, table: str, index: FaissIndex, serial: int) -> None:
        with self._lock:
            # Builds of the same table begun before this one were abandoned or are superseded.
            stale = [k for k, (born, _) in self.builds.items() if born < serial and k.startswith(table + BUILD_MARK)]
            for key in stale:
                del self.builds[key]
            self.tables.pop(table, None)
            self.tables[table] = index
            while len(self.tables) > MAX_TABLES:
                dropped = next(iter(self.tables))
                del self.tables[dropped]
                logger.info("shard %s dropped table %s", self.name, dropped)
            self.aliases = {b: t for b, t in self.aliases.items() if t in self.tables}

    def open(self, table: str, fresh: bool) -> int:
        """A private, empty build table when `fresh`; else attach to `table` (made if absent)."""
        with self._lock:
            self._serial += 1
            if fresh:
                self.builds[table] = (self._serial, self._new())
                while len(self.builds) > MAX_TABLES:
                    dropped = next(iter(self.builds))
                    del self.builds[dropped]
                    logger.warning("shard %s dropped unfinished build %s", self.name, dropped)
            elif self.aliases.get(table, table) not in self.tables:
                self.tables[table] = self._new()
        return len(self._get(table))

    def publish(self, build: str, table: str) -> None:
        with self._lock:
            serial, index = self.builds.pop(build)
            self.aliases[build] = table
        self._publish(table, index, serial)

    def train(self, table: str, vectors: np.ndarray) -> None:
        self._get(table).train(vectors)

    def add(self, table: str, ids: np.ndarray, vectors: np.ndarray) -> int:
        index = self._get(table)
        index.add(ids, vectors)
        return len(index)

    def remove(self, table: str, ids: np.ndarray) -> tuple[int, int]:
        index = self._get(table)
        return index.remove(ids), len(index)

    def search(self, table: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        index = self._get(table)
        scores, ids = index.search(queries, k)
        return scores, ids, len(index)  # the size rides along so callers keep a fresh count

    def contains(self, table: str, item_id: int) -> bool:
        return item_id in self._get(table)

    def ids(self, table: str) -> np.ndarray:
        return self._get(table).ids()

    def save(self, table: str, folder: str, version: int, extra_meta: dict) -> None:
        self._get(table).save(Path(folder), version, extra_meta)

    def load(self, table: str, folder: str) -> int:
        """Read this shard's snapshot and publish it as `table` (the old one serves until then)."""
        c = self.config
        index = FaissIndex.load(Path(folder), nprobe=c.nprobe, ef_search=c.ef_search, use_gpu=c.use_gpu)
        if index.dim != self.dim or index.factory != c.factory:
            raise ValueError(f"snapshot {folder} holds {index.factory} dim {index.dim}, shard wants {c.factory}")
        with self._lock:
            self._serial += 1
            serial = self._serial
        self._publish(table, index, serial)
        return len(index)

    def info(self, table: str) -> dict:
        import ray

        try:
            index: FaissIndex | None = self._get(table)
        except WorkerLost:
            index = None
        return {
            "name": self.name,
            "node_id": ray.get_runtime_context().get_node_id(),
            "dim": self.dim,
            "factory": self.config.factory,
            "device": index.device if index is not None else "cpu",
            "size": len(index) if index is not None else 0,
            "dead": index.dead if index is not None else 0,
            "search_breadth": index.search_breadth() if index is not None else {},
            "tables": list(self.tables),
            "builds": list(self.builds),
        }


class ShardedIndex:
    """The FaissIndex interface over `config.shards` IndexShard actors.

    Each item id lives on exactly one shard (`shard_of`), so an update replaces the old vector and
    a delete removes it there. A search asks every shard for its top-k in parallel and merges.
    Actors are named `<shard_prefix>-shard-<i>` and created with get_if_exists, so a second
    ShardedIndex with the same prefix (another front end) attaches to the same actors and table.
    A fresh index is private to its builder until `publish()` (which `save()` does first: the
    catalog snapshots every finished build), then it replaces the shared table in one step.
    Calls block (ray.get): the server runs them in threads, as it does FaissIndex's.
    """

    def __init__(
        self, dim: int, config: IndexConfig, table: str = "main", fresh: bool = True, namespace: str | None = None
    ):
        import ray

        if config.shards < 1:
            raise ValueError("a sharded index needs at least one shard")
        self.dim = dim
        self.config = config
        self.factory = config.factory
        # Fresh: build in a private table, published as `table` when done.
        self.table = f"{table}{BUILD_MARK}{uuid.uuid4().hex[:8]}" if fresh else table
        self._publish_as: str | None = table if fresh else None
        self.names = [shard_name(config.shard_prefix, i) for i in range(config.shards)]
        actor_cls = ray.remote(IndexShard)
        self.shards: list[Any] = [
            actor_cls.options(
                name=name,
                namespace=namespace,
                get_if_exists=True,
                lifetime="detached" if config.detached_shards else None,
                num_cpus=config.cpus_per_shard,
                scheduling_strategy="SPREAD",  # one shard per node where the cluster allows
                # Ray restarts a dead shard, empty: calls then raise WorkerLost and the catalog
                # refills the index from the store (Catalog.repair).
                max_restarts=-1,
                max_concurrency=SHARD_CONCURRENCY,
            ).remote(name, dim, config)
            for name in self.names
        ]
        # An actor that already existed may have been made for another index: refuse to mix.
        infos = self._call([s.info.remote(self.table) for s in self.shards])
        for info in infos:
            if info["dim"] != dim or info["factory"] != config.factory:
                raise ValueError(
                    f"shard {info['name']} holds {info['factory']} dim {info['dim']}, "
                    f"not {config.factory} dim {dim}: use another shard_prefix"
                )
        self.device = "+".join(sorted({i["device"] for i in infos})) + f" x{len(self.shards)} shards"
        self._sizes = self._call([s.open.remote(self.table, fresh) for s in self.shards])

    def publish(self) -> None:
        """Make a fresh build the shared table (atomically per shard); a no-op once published."""
        if self._publish_as is None:
            return
        self._call([s.publish.remote(self.table, self._publish_as) for s in self.shards])
        self.table, self._publish_as = self._publish_as, None

    @staticmethod
    def _call(refs: list) -> list:
        import ray

        try:
            return ray.get(refs)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
            raise WorkerLost(f"an index shard is lost ({exc}); the index is being rebuilt") from None
        except ray.exceptions.RayTaskError as exc:
            # The shard's own error (a bad shape, an IVF short of training vectors) unwrapped.
            raise (exc.cause if isinstance(exc.cause, Exception) else exc) from None

    def __len__(self) -> int:
        # Cached from the last call's answers: len() sits on the request path and must not block.
        return int(sum(self._sizes))

    def __contains__(self, item_id: int) -> bool:
        shard = int(shard_of(np.array([item_id]), len(self.shards))[0])
        return bool(self._call([self.shards[shard].contains.remote(self.table, int(item_id))])[0])

    @property
    def exact_scores(self) -> bool:
        return scores_are_exact(self.factory) and "cuda" not in self.device

    @property
    def sizes(self) -> list[int]:
        """Items per shard, as of the last call."""
        return list(self._sizes)

    @property
    def dead(self) -> int:
        return sum(i["dead"] for i in self.info())

    def info(self) -> list[dict]:
        return self._call([s.info.remote(self.table) for s in self.shards])

    def search_breadth(self) -> dict[str, int]:
        """The search setting in effect, the smallest over the shards (each sizes its own auto
        setting by its own item count, so they differ only near a size step)."""
        out: dict[str, int] = {}
        for info in self.info():
            for name, value in info["search_breadth"].items():
                out[name] = min(value, out.get(name, value))
        return out

    def describe_search(self) -> str:
        return describe_breadth(self.search_breadth(), self.config.nprobe, self.config.ef_search)

    def check(self, timeout_s: float = 10.0) -> str:
        """ "" when every shard answers and holds this index's table, else why not."""
        import ray

        try:
            infos = ray.get([s.info.remote(self.table) for s in self.shards], timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            return f"an index shard did not answer within {timeout_s:.0f}s"
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
            return f"an index shard is lost ({exc})"
        missing = [i["name"] for i in infos if self.table not in i["tables"] and self.table not in i["builds"]]
        return f"index shards {missing} lack table {self.table!r} (restarted)" if missing else ""

    def train(self, vectors: np.ndarray) -> None:
        """Every shard trains on the whole sample: each holds a random share of the catalogue, so
        the same sample describes each one."""
        import ray

        sample = ray.put(np.ascontiguousarray(vectors, dtype=np.float32))  # one copy for every shard
        self._call([s.train.remote(self.table, sample) for s in self.shards])

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert or replace the vectors of `ids` (an id present twice keeps its last vector)."""
        ids, vectors = checked_batch(ids, vectors, self.dim)
        if not len(ids):
            return
        route = shard_of(ids, len(self.shards))
        # Boolean masks keep the batch order, so "last occurrence wins" holds within each shard.
        parts = {i: route == i for i in range(len(self.shards)) if (route == i).any()}
        sizes = self._call([self.shards[i].add.remote(self.table, ids[m], vectors[m]) for i, m in parts.items()])
        for i, size in zip(parts, sizes):
            self._sizes[i] = size

    def remove(self, ids: np.ndarray) -> int:
        """Drop `ids`; unknown ids are ignored. Returns how many were present."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return 0
        route = shard_of(ids, len(self.shards))
        parts = {i: route == i for i in range(len(self.shards)) if (route == i).any()}
        answers = self._call([self.shards[i].remove.remote(self.table, ids[m]) for i, m in parts.items()])
        for i, (_, size) in zip(parts, answers):
            self._sizes[i] = size
        return sum(removed for removed, _ in answers)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, item ids) per query row over all shards; missing slots have id -1 and score -inf."""
        import ray

        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if k <= 0:
            return np.full((len(queries), 0), -np.inf, np.float32), np.full((len(queries), 0), -1, np.int64)
        arg = ray.put(queries) if queries.nbytes > PUT_QUERIES_BYTES else queries
        answers = self._call([s.search.remote(self.table, arg, k) for s in self.shards])
        self._sizes = [size for _, _, size in answers]
        return merge_top_k([a[0] for a in answers], [a[1] for a in answers], k)

    def ids(self) -> np.ndarray:
        return np.concatenate(self._call([s.ids.remote(self.table) for s in self.shards]))

    # Snapshots: <folder>/shard-<i>/ is shard i's own FaissIndex snapshot, written by the shard
    # (so on a cluster the folder must be shared storage at the same path on every node), then
    # <folder>/meta.json with the shard count, written last so a half-written snapshot never
    # looks valid.
    def save(self, folder: Path, version: int, extra_meta: dict | None = None) -> None:
        folder = Path(folder).resolve()  # shard processes need not share our working directory
        self.publish()
        folder.mkdir(parents=True, exist_ok=True)
        # Front ends sharing a data dir (and these shards) may snapshot at the same moment: one at
        # a time, or one's shard files could sit beside the other's meta.json.
        with open(folder / ".snapshot.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            meta_path = folder / "meta.json"
            meta_path.unlink(missing_ok=True)
            extra = dict(extra_meta or {})
            self._call(
                [
                    s.save.remote(self.table, str(shard_folder(folder, i)), version, extra)
                    for i, s in enumerate(self.shards)
                ]
            )
            meta = {**extra, "version": version, "dim": self.dim, "factory": self.factory, "shards": len(self.shards)}
            tmp = folder / "meta.json.tmp"
            tmp.write_text(json.dumps(meta))
            tmp.replace(meta_path)

    @staticmethod
    def snapshot_meta(folder: Path) -> dict | None:
        return FaissIndex.snapshot_meta(folder)

    @classmethod
    def load(cls, folder: Path, config: IndexConfig, table: str = "main", namespace: str | None = None) -> ShardedIndex:
        folder = Path(folder).resolve()
        meta = cls.snapshot_meta(folder)
        if meta is None:
            raise FileNotFoundError(f"no index snapshot in {folder}")
        if meta.get("shards", 1) != config.shards or meta["factory"] != config.factory:
            raise ValueError(f"snapshot in {folder} has {meta.get('shards', 1)} {meta['factory']} shards")
        index = cls(meta["dim"], config, table=table, fresh=False, namespace=namespace)
        index._sizes = index._call(
            [s.load.remote(table, str(shard_folder(folder, i))) for i, s in enumerate(index.shards)]
        )
        return index

    def shutdown(self) -> None:
        """Kill the shard actors (every front end sharing them loses its index)."""
        import ray

        for handle in self.shards:
            try:
                ray.kill(handle, no_restart=True)
            except Exception:  # already gone
                pass
        self.shards.clear()


# The hooks the catalog uses: one index type or the other by `index.shards`.


def make_index(dim: int, config: IndexConfig, table: str = "main") -> FaissIndex | ShardedIndex:
    """A new, empty index. `table` names it inside shared shard actors (the catalog passes the model)."""
    if config.shards == 1:
        c = config
        return FaissIndex(dim, c.factory, nprobe=c.nprobe, ef_search=c.ef_search, use_gpu=c.use_gpu)
    return ShardedIndex(dim, config, table=table, fresh=True)


def snapshot_meta(folder: Path, config: IndexConfig) -> dict | None:
    """The snapshot's meta, or None when there is none or its shard layout differs from `config`.

    Routing depends on the shard count, so a snapshot cut for another count cannot be loaded:
    the caller rebuilds from the store, which re-routes every item.
    """
    meta = FaissIndex.snapshot_meta(folder)
    if meta is not None and meta.get("shards", 1) != config.shards:
        logger.info("index snapshot has %s shards, config wants %d: rebuilding", meta.get("shards", 1), config.shards)
        return None
    return meta


def load_index(folder: Path, config: IndexConfig, table: str = "main") -> FaissIndex | ShardedIndex:
    if config.shards == 1:
        c = config
        return FaissIndex.load(folder, nprobe=c.nprobe, ef_search=c.ef_search, use_gpu=c.use_gpu)
    return ShardedIndex.load(folder, config, table=table)
