"""User vectors: recency-weighted pooling of the user's recent item vectors, cached per history."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from bertrec.errors import NotFound
from bertrec.stages import stage
from bertrec.store import HistoryEntry, Store


@dataclass(frozen=True)
class UserProfile:
    vector: np.ndarray | None  # None when the history holds no liked item with a vector
    history_ids: np.ndarray  # liked items, for "because you interacted with X"
    history_vectors: np.ndarray


def pool_history(
    entries: list[HistoryEntry], vectors: dict[int, np.ndarray], half_life: float, dim: int
) -> UserProfile:
    """Weighted mean of liked items' vectors; the n-th most recent counts 0.5 ** (n / half_life).

    Pooled item vectors rather than BERT over the concatenated history text: the item vectors
    already exist (no model call per request), nothing is truncated at max_length, and each
    history item keeps its own direction for the "because" explanation.
    """
    liked = [e for e in entries if e.weight > 0 and e.item_id in vectors]
    if not liked:
        empty = np.zeros((0, dim), np.float32)
        return UserProfile(None, np.zeros(0, np.int64), empty)
    ages = np.arange(len(liked) - 1, -1, -1, dtype=np.float32)
    weights = np.array([e.weight for e in liked], np.float32) * np.power(0.5, ages / half_life)
    matrix = np.stack([vectors[e.item_id] for e in liked])
    pooled = weights @ matrix
    norm = np.linalg.norm(pooled)
    ids = np.array([e.item_id for e in liked], np.int64)
    # One row per distinct item for the explanation.
    _, first = np.unique(ids, return_index=True)
    return UserProfile(pooled / norm if norm > 0 else None, ids[first], matrix[first])


class UserProfiles:
    """Profiles keyed by (user, history key): a new interaction changes the key, so the cache
    needs no invalidation messages and stays right when several front ends share a store."""

    def __init__(self, store: Store, model: str, dim: int, max_history: int, half_life: float, size: int):
        self.store = store
        self.model = model
        self.dim = dim
        self.max_history = max_history
        self.half_life = half_life
        self.size = size
        # user -> (history key, profile, every item the user interacted with)
        self._cache: OrderedDict[str, tuple[int, UserProfile, frozenset[int]]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        """Forget every cached profile (the item vectors changed, e.g. a model swap)."""
        self._cache.clear()

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    async def for_user(self, user_id: str) -> UserProfile:
        with stage("user"):
            return await self._for_user(user_id)

    async def _for_user(self, user_id: str) -> UserProfile:
        # One small query decides whether the cached profile still holds: the key changes with
        # every interaction of the user, whichever front end recorded it.
        key = await asyncio.to_thread(self.store.history_key, user_id)
        cached = self._cache.get(user_id)
        if cached is not None and cached[0] == key:
            self.hits += 1
            self._cache.move_to_end(user_id)
            return cached[1]
        self.misses += 1
        # The most recent liked items form the taste; a user who has liked nothing yet is
        # represented by what they have seen, which beats refusing a known user.
        entries, key = await asyncio.to_thread(self.store.history, user_id, self.max_history, True)
        if not entries:
            seen_entries, key = await asyncio.to_thread(self.store.history, user_id, self.max_history)
            if not seen_entries:
                raise NotFound(f"unknown user {user_id!r}: no interactions recorded")
            entries = [HistoryEntry(e.item_id, e.timestamp, 1.0) for e in seen_entries]
        seen = frozenset(await asyncio.to_thread(self.store.seen_items, user_id))
        vectors = await asyncio.to_thread(self.store.get_vectors, [e.item_id for e in entries], self.model)
        profile = pool_history(entries, vectors, self.half_life, self.dim)
        self._cache[user_id] = (key, profile, seen)
        if len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return profile

    async def seen(self, user_id: str) -> frozenset[int]:
        """Every item the user interacted with: from the profile cache that `for_user` just
        validated in this request, else from the store."""
        cached = self._cache.get(user_id)
        if cached is not None:
            return cached[2]
        return frozenset(await asyncio.to_thread(self.store.seen_items, user_id))

    async def for_history(self, item_ids: tuple[int, ...]) -> UserProfile:
        with stage("user"):
            return await self._for_history(item_ids)

    async def _for_history(self, item_ids: tuple[int, ...]) -> UserProfile:
        vectors = await asyncio.to_thread(self.store.get_vectors, list(item_ids), self.model)
        missing = [i for i in item_ids if i not in vectors]
        if missing:
            raise NotFound(f"unknown history item ids: {missing[:10]}")
        entries = [HistoryEntry(i, float(n), 1.0) for n, i in enumerate(item_ids)]
        return pool_history(entries, vectors, self.half_life, self.dim)
