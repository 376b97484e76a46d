"""ServiceState: builds the store, encoder pool, catalog and recommender, and knows when they are ready."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from bertrec import __version__
from bertrec.config import Config
from bertrec.errors import FailedPrecondition, InvalidRequest, NotFound
from bertrec.fingerprint import model_fingerprint
from bertrec.server import heap
from bertrec.types import ReplicaInfo, ServiceInfo

logger = logging.getLogger(__name__)

DEMO_BATCH = 2048
MODEL_POINTER = "active_model.json"  # in the data dir: the checkpoint the service serves


def _stored_validation(checkpoint: Path) -> tuple[float | None, tuple]:
    """(validation NDCG@10, (split, split seed)) from a checkpoint's training record, if any."""
    record_file = checkpoint / "bertrec_training.json"
    if not record_file.exists():
        return None, ()
    record = json.loads(record_file.read_text())
    ndcg = ((record.get("summary") or {}).get("validation") or {}).get("ndcg@10")
    config = record.get("config") or {}
    return ndcg, (config.get("split"), config.get("split_seed"))


def compare_evaluations(serving: Path, candidate: Path) -> str:
    """Why `candidate` is worse than the serving model by stored validation NDCG@10, or "" when
    it is not worse or they cannot be compared (the packaged model has no stored evaluation)."""
    old, old_split = _stored_validation(serving)
    if old is None:
        return ""
    new, new_split = _stored_validation(candidate)
    if new is None:
        return f"{candidate.name} has no stored evaluation; the serving model has validation NDCG@10 {old:.4f}"
    if new_split == old_split and new < old:
        return f"{candidate.name} validation NDCG@10 {new:.4f} < serving {old:.4f}"
    return ""


def replica_info(r: dict) -> ReplicaInfo:
    """A replica's info() dict (or the pool's stand-in for a replica that is down) as the domain type."""
    return ReplicaInfo(
        name=r["name"],
        device=r["device"],
        node_id=r.get("node_id", ""),
        healthy=r["healthy"],
        encoded_texts=r.get("encoded_texts", 0),
        mean_batch_size=r.get("mean_batch_size", 0.0),
        max_batch_size=r.get("max_batch_size", 0),
        max_wait_s=r.get("max_wait_s", 0.0),
        max_batch_tokens=r.get("max_batch_tokens", 0),
        mean_queue_s=r.get("mean_queue_s", 0.0),
        runtime=r.get("runtime", ""),
    )


class ServiceState:
    def __init__(self, config: Config):
        self.config = config
        self.ready = False
        self.store = None
        self.pool = None
        self.catalog = None
        self.recommender = None
        self.profiles = None
        self.reranker = None
        self._snapshot_task: asyncio.Task | None = None
        self._index_watch: asyncio.Task | None = None
        self._swap_lock = asyncio.Lock()
        self.model_path = ""

    async def start(self) -> None:
        from bertrec.server.catalog import Catalog
        from bertrec.server.recommend import Recommender
        from bertrec.server.users import UserProfiles
        from bertrec.store import open_store
        from bertrec.workers.encoder import default_model_path
        from bertrec.workers.pool import RayEncoderPool
        from bertrec.workers.replica import read_model_pointer

        cfg = self.config
        pointer = str(Path(cfg.store.data_dir) / MODEL_POINTER)
        Path(cfg.store.data_dir).mkdir(parents=True, exist_ok=True)
        # An explicit --model wins; otherwise the model promoted by the last swap; else the default.
        model_path = cfg.model.path or read_model_pointer(pointer) or default_model_path()
        self.model_path = model_path
        self.store = open_store(cfg.store.url, cfg.store.data_dir)
        self.pool = RayEncoderPool(dataclasses.replace(cfg.model, path=model_path), cfg.workers, pointer)
        await self.pool.start()
        fingerprint = model_fingerprint(model_path) + self.pool.fingerprint_suffix
        self.catalog = Catalog(self.store, self.pool, fingerprint, cfg.index, cfg.store.data_dir)
        if cfg.store.load_demo and await asyncio.to_thread(lambda: self.store.counts()["items"]) == 0:
            await self._load_demo()
        await self.catalog.open()
        self.profiles = UserProfiles(
            self.store,
            fingerprint,
            self.pool.dim,
            cfg.server.max_history,
            cfg.server.history_half_life,
            cfg.server.user_cache_size,
            self._user_tower(model_path),
            self.pool.encode,
        )
        self.reranker = self._load_reranker(fingerprint)
        self.recommender = Recommender(self.catalog, self.pool, self.profiles, cfg.server, self.reranker)
        self._snapshot_task = asyncio.ensure_future(self._snapshot_loop())
        if cfg.index.shards > 1:
            self._index_watch = asyncio.ensure_future(self._index_watch_loop())
        self.ready = True

    def _user_tower(self, model_path: str):
        """The checkpoint's user tower; the history-text tower encodes through the replicas."""
        from bertrec.server.users import UserTower

        tower = UserTower.load(model_path)
        if tower.kind == "history-text" and tower.max_length != self.config.model.max_length:
            logger.warning(
                "%s was trained on history texts of up to %d tokens; the replicas encode up to %d (model.max_length)",
                Path(model_path).name,
                tower.max_length,
                self.config.model.max_length,
            )
        if tower.kind != "items":
            logger.info(
                "user tower of %s: %s over the latest %d liked items", model_path, tower.kind, tower.history_items
            )
        return tower

    def _load_reranker(self, fingerprint: str):
        if not self.config.rerank.path:
            return None
        from bertrec.server.reranking import ServingReranker

        reranker = ServingReranker(
            self.config.rerank.path, self.store, self.config.rerank, self.config.server.history_half_life
        )
        reranker.check_encoder(self.pool.dim, fingerprint)
        reranker.start(lambda: self.catalog.model)
        logger.info("trained re-ranker %s: fitting its collaborative signals in the background", reranker.name)
        return reranker

    async def _load_demo(self) -> None:
        from bertrec.movielens import bundled_path, read_movies, read_ratings

        folder = bundled_path()
        logger.info("empty store: loading the bundled MovieLens-small demo catalogue from %s", folder)
        items = list(read_movies(folder))
        # Items go in without vectors; Catalog.open encodes them with a progress bar.
        for start in range(0, len(items), DEMO_BATCH):
            await asyncio.to_thread(self.store.upsert_items, items[start : start + DEMO_BATCH], {}, "")
        ratings = list(read_ratings(folder))
        await asyncio.to_thread(self.store.record_interactions, ratings)
        logger.info("demo loaded: %d movies, %d ratings", len(items), len(ratings))

    def checkpoint_path(self, requested: str) -> Path:
        """Resolve a caller-given checkpoint inside the configured folder; nothing outside it."""
        root = Path(self.config.model.checkpoints_dir or Path(self.config.store.data_dir) / "checkpoints").resolve()
        path = (root / requested).resolve()
        if not requested or not path.is_relative_to(root):
            raise InvalidRequest(f"model_path must name a checkpoint inside {root}")
        if not (path / "config.json").exists():
            raise NotFound(f"no Hugging Face checkpoint (config.json) at {requested!r} in {root}")
        return path

    async def load_model(self, requested: str, force: bool) -> AsyncIterator[tuple[str, int, int, str]]:
        """Swap the served model: stage it in every replica, re-encode the catalogue into a new
        index while the old one serves, then switch. Yields (stage, done, total, message)."""
        if self._swap_lock.locked():
            raise FailedPrecondition("a model swap is already in progress")
        async with self._swap_lock:
            path = self.checkpoint_path(requested)
            verdict = compare_evaluations(Path(self.model_path), path)
            if verdict and not force:
                raise FailedPrecondition(f"swap refused: {verdict} (force to override)")
            tower = self._user_tower(str(path))  # a broken tower fails the swap before any re-encoding
            yield "loading", 0, 1, f"loading {path.name} into {len(self.pool.replicas)} replicas"
            staged = await self.pool.load_staging(str(path))
            if staged["dim"] != self.pool.dim:
                await self.pool.drop_staging()
                raise FailedPrecondition(
                    f"{path.name} makes {staged['dim']}-dim vectors, the index holds {self.pool.dim}"
                )
            events: asyncio.Queue = asyncio.Queue()

            async def progress(stage: str, done: int, total: int) -> None:
                await events.put((stage, done, total, ""))

            async def promote() -> None:
                await self.pool.promote_staging(str(path))

            new_model = model_fingerprint(str(path)) + self.pool.fingerprint_suffix
            swap = asyncio.ensure_future(
                self.catalog.swap_model(
                    lambda texts: self.pool.encode(texts, staging=True), new_model, promote, progress
                )
            )
            try:
                while not (swap.done() and events.empty()):
                    getter = asyncio.ensure_future(events.get())
                    await asyncio.wait([getter, swap], return_when=asyncio.FIRST_COMPLETED)
                    if getter.done():
                        yield getter.result()
                    else:
                        getter.cancel()
                await swap  # re-raise a failure
            except BaseException:
                swap.cancel()
                await self.pool.drop_staging()
                raise
            self.profiles.model = new_model
            self.profiles.tower = tower
            self.profiles.clear()
            self.model_path = str(path)
            logger.info("model swapped to %s", path)
            # One full collection on the event loop (~0.2 s with a large catalogue): once per
            # swap, to free the old model's objects and keep the new ones out of later passes.
            heap.settle()
            yield "done", 1, 1, f"serving {path.name}"

    async def _snapshot_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.server.snapshot_interval_s)
            try:
                await self.catalog.snapshot_if_changed()
            except Exception:
                logger.exception("index snapshot failed; will retry")

    async def _index_watch_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.index.check_interval_s)
            try:
                await self.catalog.check_index()
            except Exception:
                logger.exception("index check failed; will retry")

    async def info(self) -> ServiceInfo:
        replicas = await self.pool.info()
        counts = await asyncio.to_thread(self.store.counts)
        version = await asyncio.to_thread(self.store.version)
        index = self.catalog.index
        return ServiceInfo(
            version=__version__,
            model=self.pool.model_name,
            dim=self.pool.dim,
            replicas=tuple(map(replica_info, replicas)),
            index_type=index.factory,
            index_device=index.device,
            index_size=len(index),
            item_count=counts["items"],
            user_count=counts["users"],
            interaction_count=counts["interactions"],
            store_version=version,
            user_cache_hit_rate=self.profiles.hit_rate,
            reranker=self.reranker.name if self.reranker else "",
            reranker_ready=bool(self.reranker and self.reranker.ready_for(self.catalog.model)),
        )

    async def configure_batching(
        self, max_batch_size: int | None, max_wait_s: float | None, max_batch_tokens: int | None
    ) -> tuple[ReplicaInfo, ...]:
        """Change the replicas' batching now (validated by the caller); their effective settings."""
        replicas = await self.pool.configure_batching(max_batch_size, max_wait_s, max_batch_tokens)
        logger.info(
            "batching changed to max_batch_size=%s max_wait_s=%s max_batch_tokens=%s (None = unchanged)",
            max_batch_size,
            max_wait_s,
            max_batch_tokens,
        )
        return tuple(map(replica_info, replicas))

    async def close(self) -> None:
        self.ready = False
        for task in (self._snapshot_task, self._index_watch):
            if task:
                task.cancel()
        if self.reranker:
            self.reranker.stop()
        if self.catalog and self.catalog.index is not None:
            await self.catalog.snapshot_if_changed()
        if self.pool:
            self.pool.shutdown()
        if self.store:
            self.store.close()
