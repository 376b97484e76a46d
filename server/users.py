"""User vectors: recency-weighted pooling of the user's recent item vectors (then the serving
checkpoint's user tower, if it was trained with one), cached per history."""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

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


USER_TOWERS = ("items", "pooled", "history-text")
USER_TOWER_FILE = "user_tower.npy"  # the pooled tower's W, (dim, dim) as torch's Linear holds it


@dataclass(frozen=True)
class UserTower:
    """How a checkpoint makes a user vector from the liked history (`bertrec train --user-tower`).

    "items": pool_history over the whole history (the pretrained model's recipe). "pooled": the
    same pooling over the latest `history_items` liked items, then `v + W v`, L2-normalised.
    "history-text": the encoder over the latest `history_items` liked titles, most recent first
    (`encode` turns such texts into vectors where the caller has the encoder in hand).
    """

    kind: str = "items"
    history_items: int = 0  # 0 = the whole history
    max_length: int = 128  # history-text: tokens of the user side
    weight: np.ndarray | None = None  # pooled: W
    encode: Callable[[list[str]], np.ndarray] | None = None

    @classmethod
    def load(cls, model_path: str) -> UserTower:
        """The tower a fine-tuned checkpoint was trained with; "items" for any other model."""
        folder = Path(model_path) if model_path else None
        record = folder / "bertrec_training.json" if folder else None
        if record is None or not record.exists():
            return cls()
        config = json.loads(record.read_text())["config"]
        kind = config.get("user_tower", "items")
        if kind == "items":
            return cls()
        weight = np.load(folder / USER_TOWER_FILE).astype(np.float32) if kind == "pooled" else None
        return cls(kind, config["history_items"], config["user_max_length"], weight)

    def recent(self, entries: list[HistoryEntry], available: Collection[int]) -> list[HistoryEntry]:
        """The liked entries the tower reads: those with a vector (or text), the latest ones."""
        liked = [e for e in entries if e.weight > 0 and e.item_id in available]
        return liked[-self.history_items :] if self.history_items else liked

    def pooled(
        self, entries: list[HistoryEntry], vectors: dict[int, np.ndarray], half_life: float, dim: int
    ) -> np.ndarray | None:
        """items and pooled towers: the user vector from the liked items' vectors."""
        vector = pool_history(self.recent(entries, vectors), vectors, half_life, dim).vector
        if vector is None or self.weight is None:
            return vector
        out = vector + self.weight @ vector
        return (out / max(float(np.linalg.norm(out)), 1e-12)).astype(np.float32)

    def text(self, entries: list[HistoryEntry], texts: dict[int, str]) -> str:
        """history-text tower: the user side's text ("" without a liked item)."""
        from bertrec.rerank.cross_encoder import history_text

        titles = [texts[e.item_id] for e in self.recent(entries, texts)]
        return history_text(titles, len(titles))

    def text_vectors(self, histories: list[list[HistoryEntry]], texts: dict[int, str], dim: int) -> np.ndarray:
        """history-text tower: one vector per history, zeros for one without a liked item."""
        assert self.encode is not None, "the history-text tower needs an encoder"
        strings = [self.text(h, texts) for h in histories]
        out = np.zeros((len(histories), dim), np.float32)
        filled = [n for n, s in enumerate(strings) if s]
        if filled:
            out[filled] = self.encode([strings[n] for n in filled])
        return out


class CachedProfile(NamedTuple):
    key: int  # the user's history key when the profile was made
    profile: UserProfile
    seen: np.ndarray  # every item the user interacted with, sorted, read-only


def _sorted_ids(ids: Collection[int]) -> np.ndarray:
    out = np.unique(np.fromiter(ids, np.int64, len(ids)))
    out.flags.writeable = False  # shared by every request of the user while cached
    return out


class UserProfiles:
    """Profiles keyed by (user, history key): a new interaction changes the key, so the cache
    needs no invalidation messages and stays right when several front ends share a store."""

    def __init__(
        self,
        store: Store,
        model: str,
        dim: int,
        max_history: int,
        half_life: float,
        size: int,
        tower: UserTower | None = None,
        encode: Callable[[list[str]], Awaitable[np.ndarray]] | None = None,
    ):
        self.store = store
        self.model = model
        self.tower = tower or UserTower()  # the serving model's; swapped with `model`
        self.encode = encode  # texts -> vectors with the serving model (the history-text tower)
        self.dim = dim
        self.max_history = max_history
        self.half_life = half_life
        self.size = size
        self._cache: OrderedDict[str, CachedProfile] = OrderedDict()
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
        if cached is not None and cached.key == key and self.confirmed(user_id, cached):
            return cached.profile
        self.misses += 1
        # The most recent liked items form the taste; a user who has liked nothing yet is
        # represented by what they have seen, which beats refusing a known user.
        entries, key = await asyncio.to_thread(self.store.history, user_id, self.max_history, True)
        if not entries:
            seen_entries, key = await asyncio.to_thread(self.store.history, user_id, self.max_history)
            if not seen_entries:
                raise NotFound(f"unknown user {user_id!r}: no interactions recorded")
            entries = [HistoryEntry(e.item_id, e.timestamp, 1.0) for e in seen_entries]
        seen = _sorted_ids(await asyncio.to_thread(self.store.seen_items, user_id))
        vectors = await asyncio.to_thread(self.store.get_vectors, [e.item_id for e in entries], self.model)
        profile = await self._profile(entries, vectors)
        self._cache[user_id] = CachedProfile(key, profile, seen)
        if len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return profile

    def unconfirmed(self, user_id: str) -> CachedProfile | None:
        """The user's cached profile without asking the store whether it still holds: for a caller
        that compares `key` with the store's `history_key` itself, then calls `confirmed`."""
        return self._cache.get(user_id)

    def confirmed(self, user_id: str, cached: CachedProfile) -> bool:
        """`cached` was found current: count the hit and keep it longest. False when it is no
        longer the user's cached profile (a model swap cleared the cache, or it was evicted,
        while the caller checked it): the caller must not use it."""
        if self._cache.get(user_id) is not cached:
            return False
        self.hits += 1
        self._cache.move_to_end(user_id)
        return True

    async def seen(self, user_id: str) -> np.ndarray:
        """Every item the user interacted with, sorted and distinct (read-only): from the profile
        cache that `for_user` just validated in this request, else from the store."""
        cached = self._cache.get(user_id)
        if cached is not None:
            return cached.seen
        return _sorted_ids(await asyncio.to_thread(self.store.seen_items, user_id))

    async def for_history(self, item_ids: tuple[int, ...]) -> UserProfile:
        with stage("user"):
            return await self._for_history(item_ids)

    async def _for_history(self, item_ids: tuple[int, ...]) -> UserProfile:
        vectors = await asyncio.to_thread(self.store.get_vectors, list(item_ids), self.model)
        missing = [i for i in item_ids if i not in vectors]
        if missing:
            raise NotFound(f"unknown history item ids: {missing[:10]}")
        entries = [HistoryEntry(i, float(n), 1.0) for n, i in enumerate(item_ids)]
        return await self._profile(entries, vectors)

    async def _profile(self, entries: list[HistoryEntry], vectors: dict[int, np.ndarray]) -> UserProfile:
        """The history's items explain the results; the serving model's user tower makes the vector."""
        profile = pool_history(entries, vectors, self.half_life, self.dim)
        tower = self.tower
        if tower.kind == "items" or profile.vector is None:
            return profile
        if tower.kind == "pooled":
            return replace(profile, vector=tower.pooled(entries, vectors, self.half_life, self.dim))
        recent = tower.recent(entries, vectors)
        items = await asyncio.to_thread(self.store.get_items, [e.item_id for e in recent])
        text = tower.text(recent, {i: item.text for i, item in items.items()})
        return replace(profile, vector=(await self.encode([text]))[0] if text else None)
