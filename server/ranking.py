"""Pure ranking arithmetic: tie-broken ordering, MMR diversity, "because you interacted with X"."""

from __future__ import annotations

import numpy as np

_TIE_SEED = np.uint64(0x9E3779B97F4A7C15)


def tie_break_keys(ids: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random key per item id: equal scores are ordered by it, never by the id itself."""
    x = ids.astype(np.uint64) * _TIE_SEED
    x ^= x >> np.uint64(31)
    return x


def order_by_score(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Indices that sort by score descending, ties by the fixed random key."""
    return np.lexsort((tie_break_keys(ids), -scores))


def mmr(relevance: np.ndarray, vectors: np.ndarray, k: int, diversity: float) -> np.ndarray:
    """Maximal marginal relevance: greedily pick items relevant to the user and unlike those picked.

    `diversity` in [0, 1): 0 keeps the relevance order. Returns chosen row indices in pick order.
    """
    n = len(relevance)
    k = min(k, n)
    if diversity <= 0 or n == 0:
        return np.argsort(-relevance, kind="stable")[:k]
    chosen: list[int] = []
    max_sim = np.full(n, -np.inf, dtype=np.float32)
    available = np.ones(n, dtype=bool)
    for _ in range(k):
        penalty = np.where(np.isfinite(max_sim), max_sim, 0.0)
        gain = (1 - diversity) * relevance - diversity * penalty
        gain[~available] = -np.inf
        pick = int(np.argmax(gain))
        chosen.append(pick)
        available[pick] = False
        max_sim = np.maximum(max_sim, vectors @ vectors[pick])
    return np.asarray(chosen, dtype=np.int64)


def closest_history(
    item_vectors: np.ndarray, history_ids: np.ndarray, history_vectors: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each item, the history item most similar to it and that similarity (0 / 0.0 without history)."""
    if len(history_ids) == 0 or len(item_vectors) == 0:
        return np.zeros(len(item_vectors), np.int64), np.zeros(len(item_vectors), np.float32)
    sims = item_vectors @ history_vectors.T
    best = sims.argmax(axis=1)
    return history_ids[best], sims[np.arange(len(item_vectors)), best].astype(np.float32)
