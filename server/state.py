"""ServiceState: builds the store, encoder pool, catalog and recommender, and knows when they are ready."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

from bertrec import __version__
from bertrec.config import Config
from bertrec.types import ReplicaInfo, ServiceInfo

logger = logging.getLogger(__name__)

DEMO_BATCH = 2048


def model_fingerprint(model_path: str) -> str:
    """Identifies the weights item vectors were made with: folder name plus file sizes and times."""
    folder = Path(model_path)
    digest = hashlib.blake2b(digest_size=8)
    for f in sorted(folder.glob("*")):
        if f.is_file():
            stat = f.stat()
            digest.update(f"{f.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return f"{folder.name}-{digest.hexdigest()}"


class ServiceState:
    def __init__(self, config: Config):
        self.config = config
        self.ready = False
        self.store = None
        self.pool = None
        self.catalog = None
        self.recommender = None
        self.profiles = None
        self._snapshot_task: asyncio.Task | None = None

    async def start(self) -> None:
        from bertrec.server.catalog import Catalog
        from bertrec.server.recommend import Recommender
        from bertrec.server.users import UserProfiles
        from bertrec.store import SQLiteStore
        from bertrec.workers.encoder import default_model_path
        from bertrec.workers.pool import RayEncoderPool

        cfg = self.config
        model_path = cfg.model.path or default_model_path()
        self.store = SQLiteStore(cfg.store.data_dir)
        self.pool = RayEncoderPool(cfg.model, cfg.workers)
        await self.pool.start()
        fingerprint = model_fingerprint(model_path)
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
        )
        self.recommender = Recommender(self.catalog, self.pool, self.profiles, cfg.server)
        self._snapshot_task = asyncio.ensure_future(self._snapshot_loop())
        self.ready = True

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

    async def _snapshot_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.server.snapshot_interval_s)
            try:
                await self.catalog.snapshot_if_changed()
            except Exception:
                logger.exception("index snapshot failed; will retry")

    async def info(self) -> ServiceInfo:
        replicas = await self.pool.info()
        counts = await asyncio.to_thread(self.store.counts)
        version = await asyncio.to_thread(self.store.version)
        index = self.catalog.index
        return ServiceInfo(
            version=__version__,
            model=self.pool.model_name,
            dim=self.pool.dim,
            replicas=tuple(
                ReplicaInfo(
                    name=r["name"],
                    device=r["device"],
                    node_id=r.get("node_id", ""),
                    healthy=r["healthy"],
                    encoded_texts=r.get("encoded_texts", 0),
                    mean_batch_size=r.get("mean_batch_size", 0.0),
                )
                for r in replicas
            ),
            index_type=index.factory,
            index_device=index.device,
            index_size=len(index),
            item_count=counts["items"],
            user_count=counts["users"],
            interaction_count=counts["interactions"],
            store_version=version,
            user_cache_hit_rate=self.profiles.hit_rate,
        )

    async def close(self) -> None:
        self.ready = False
        if self._snapshot_task:
            self._snapshot_task.cancel()
        if self.catalog and self.catalog.index is not None:
            await self.catalog.snapshot_if_changed()
        if self.pool:
            self.pool.shutdown()
        if self.store:
            self.store.close()
