"""Catalog: keeps the FAISS index in step with the store (writes, snapshots, rebuilds)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bertrec.config import IndexConfig
from bertrec.errors import WorkerLost
from bertrec.server.index_build import fill_index
from bertrec.server.search_batching import SearchBatcher, ThenFn
from bertrec.store import Store
from bertrec.store.sql_reads import text_hash
from bertrec.types import DeleteSummary, Item, UpsertSummary
from bertrec.workers.index import FaissIndex
from bertrec.workers.shards import load_index, make_index, snapshot_meta

logger = logging.getLogger(__name__)

ENCODE_CHUNK = 1024  # texts per encode call during rebuilds, so progress is visible


class TextEncoder(Protocol):
    dim: int

    async def encode(self, texts: list[str], deadline: float | None = None) -> np.ndarray: ...


class Catalog:
    """Writes go store first (durable), then index, under one lock, so a snapshot taken under
    the same lock matches exactly one store version. Item vectors are stored with the item and
    recomputed only when its text (or the model) changes.
    """

    def __init__(
        self,
        store: Store,
        encoder: TextEncoder,
        model_fingerprint: str,
        index_config: IndexConfig,
        data_dir: str | Path,
    ):
        self.store = store
        self.encoder = encoder
        self.model = model_fingerprint
        self.index_config = index_config
        self.snapshot_dir = Path(data_dir) / "index"
        self.index: FaissIndex | None = None
        self._write_lock = asyncio.Lock()
        self._snapshot_version = -1
        self._repair: asyncio.Task | None = None
        self._searches = SearchBatcher(self._search_now)
        self.repairs = 0  # completed index rebuilds after a lost shard

    def _new_index(self, model: str) -> FaissIndex:
        return make_index(self.encoder.dim, self.index_config, table=model)  # type: ignore[return-value]

    async def open(self) -> None:
        """Encode items that lack a vector for this model, then load the snapshot or rebuild."""
        await self._encode_missing()
        version = await asyncio.to_thread(self.store.version)
        meta = snapshot_meta(self.snapshot_dir, self.index_config)  # None also when the shard count changed
        if (
            meta
            and meta.get("version") == version
            and meta.get("model") == self.model
            and meta.get("factory") == self.index_config.factory
        ):
            self.index = await asyncio.to_thread(load_index, self.snapshot_dir, self.index_config, self.model)  # type: ignore[assignment]
            self._snapshot_version = version
            search = await asyncio.to_thread(self.index.describe_search)
            logger.info("index snapshot loaded: %d items (store version %d), %s", len(self.index), version, search)
            return
        logger.info(
            "index snapshot %s store version %d: rebuilding",
            "absent for" if meta is None else "does not match",
            version,
        )
        await self.rebuild()

    async def _encode_missing(self) -> None:
        from tqdm import tqdm

        missing = await asyncio.to_thread(self.store.items_without_vector, self.model)
        if not missing:
            return
        logger.info("encoding %d items that have no vector for model %s", len(missing), self.model)
        with tqdm(total=len(missing), desc="encoding catalogue", unit="item") as bar:
            for start in range(0, len(missing), ENCODE_CHUNK):
                part = missing[start : start + ENCODE_CHUNK]
                vectors = await self.encoder.encode([i.text for i in part])
                await asyncio.to_thread(
                    self.store.upsert_items, part, {i.id: v for i, v in zip(part, vectors)}, self.model
                )
                bar.update(len(part))

    async def rebuild(self) -> None:
        async with self._write_lock:
            version = await asyncio.to_thread(self.store.version)
            index = await self._build_index(self.model)
            self.index = index
            search = await asyncio.to_thread(index.describe_search)
            logger.info("index built: %d items, %s on %s, %s", len(index), index.factory, index.device, search)
            await self._save_locked(version)

    async def _save_locked(self, version: int) -> None:
        assert self.index is not None
        await asyncio.to_thread(self.index.save, self.snapshot_dir, version, {"model": self.model})
        self._snapshot_version = version

    async def snapshot_if_changed(self) -> bool:
        async with self._write_lock:
            version = await asyncio.to_thread(self.store.version)
            if self.index is None or version == self._snapshot_version:
                return False
            await self._save_locked(version)
            return True

    async def search(self, queries: np.ndarray, k: int, then: ThenFn | None = None) -> Any:
        """Top-k (scores, ids) of the serving index, off the event loop; concurrent searches share
        FAISS calls. With `then`: what `then(scores, ids)` returns, run in the search's thread."""
        assert self.index is not None
        try:
            return await self._searches.search(queries, k, then)
        except WorkerLost:
            self.schedule_repair("a search failed")
            raise

    def _search_now(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(queries, k)  # the index serving when the batch leaves

    async def _index_call(self, fn, *args):
        # The store already holds every write, so a lost index shard costs a rebuild, not data:
        # the caller gets UNAVAILABLE (the SDK retries) while the index is refilled.
        try:
            return await asyncio.to_thread(fn, *args)
        except WorkerLost:
            self.schedule_repair("an index call failed")
            raise

    def schedule_repair(self, why: str) -> asyncio.Task:
        """Rebuild the index from the store in the background; one rebuild at a time."""
        if self._repair is None or self._repair.done():
            logger.warning("index lost (%s): rebuilding it from the store", why)
            self._repair = asyncio.ensure_future(self._rebuild_after_loss())
        return self._repair

    @property
    def repairing(self) -> bool:
        return self._repair is not None and not self._repair.done()

    async def _rebuild_after_loss(self) -> None:
        began = time.monotonic()
        while True:
            try:
                await self.rebuild()
                break
            except WorkerLost as exc:  # a shard still restarting: try again shortly
                logger.warning("index rebuild failed (%s); retrying", exc)
                await asyncio.sleep(1.0)
        self.repairs += 1
        logger.warning("index rebuilt from the store in %.2fs: %d items", time.monotonic() - began, len(self.index))

    async def check_index(self) -> None:
        """Rebuild when a shard of the index restarted or vanished (no-op for an in-process index)."""
        check = getattr(self.index, "check", None)
        if check is None or self.repairing:
            return
        problem = await asyncio.to_thread(check)
        if problem:
            await self.schedule_repair(problem)

    async def upsert(self, items: Sequence[Item], deadline: float | None = None) -> UpsertSummary:
        # A repeated id in one batch: the last occurrence wins, as in the index.
        latest = {item.id: item for item in items}
        records = await asyncio.to_thread(self.store.get_item_records, list(latest), self.model)
        to_encode = [
            item
            for item in latest.values()
            if item.id not in records
            or records[item.id].text_hash != text_hash(item.text)
            or not records[item.id].has_vector
        ]
        encoding = {item.id for item in to_encode}
        changed_metadata = [
            item
            for item in latest.values()
            if item.id in records and item.id not in encoding and records[item.id].item.metadata != item.metadata
        ]
        vectors = await self.encoder.encode([i.text for i in to_encode], deadline) if to_encode else None
        by_id = {i.id: v for i, v in zip(to_encode, vectors)} if vectors is not None else {}
        writes = to_encode + changed_metadata
        async with self._write_lock:
            if writes:
                await asyncio.to_thread(self.store.upsert_items, writes, by_id, self.model)
            if to_encode:
                assert self.index is not None
                await self._index_call(self.index.add, np.array([i.id for i in to_encode], dtype=np.int64), vectors)
        inserted = sum(1 for i in latest if i not in records)
        return UpsertSummary(
            received=len(items),
            inserted=inserted,
            updated=len(writes) - inserted,
            unchanged=len(latest) - len(writes),
            encoded=len(to_encode),
        )

    async def swap_model(
        self,
        encode_staged: Callable[[list[str]], Awaitable[np.ndarray]],
        new_model: str,
        promote: Callable[[], Awaitable[None]],
        progress: Callable[[str, int, int], Awaitable[None]],
    ) -> None:
        """Re-encode the catalogue with a staged model into a new index while the current one
        keeps serving, then switch model and index together under the write lock."""
        missing = await asyncio.to_thread(self.store.items_without_vector, new_model)
        await progress("encoding", 0, len(missing))
        await self._put_staged(missing, encode_staged, new_model, progress)
        await progress("indexing", 0, 1)
        async with self._write_lock:
            # Items written while we encoded: catch up before switching.
            late = await asyncio.to_thread(self.store.items_without_vector, new_model)
            await self._put_staged(late, encode_staged, new_model, None)
            index = await self._build_index(new_model)
            await promote()
            self.model, self.index = new_model, index
            await self._save_locked(await asyncio.to_thread(self.store.version))
        await asyncio.to_thread(self.store.drop_vectors_except, new_model)
        await progress("swapped", 1, 1)

    async def _put_staged(self, items: list[Item], encode_staged, model: str, progress) -> None:
        done = 0
        for start in range(0, len(items), ENCODE_CHUNK):
            part = items[start : start + ENCODE_CHUNK]
            vectors = await encode_staged([i.text for i in part])
            await asyncio.to_thread(
                self.store.put_vectors, {i.id: v for i, v in zip(part, vectors)}, {i.id: i.text for i in part}, model
            )
            done += len(part)
            if progress:
                await progress("encoding", done, len(items))

    async def _build_index(self, model: str) -> FaissIndex:
        index = await asyncio.to_thread(self._new_index, model)  # shard actors may take a while to start
        await asyncio.to_thread(fill_index, index, self.store, model, self.index_config.factory, self.encoder.dim)
        return index

    async def delete(self, ids: Sequence[int]) -> DeleteSummary:
        async with self._write_lock:
            deleted, _ = await asyncio.to_thread(self.store.delete_items, list(ids))
            assert self.index is not None
            await self._index_call(self.index.remove, np.array(deleted, dtype=np.int64))
        gone = set(deleted)
        return DeleteSummary(deleted=len(deleted), missing_item_ids=tuple(i for i in ids if i not in gone))
