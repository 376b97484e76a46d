"""Ranking metrics per user (Recall, NDCG, HitRate) and catalogue coverage, with paired comparisons."""

from __future__ import annotations

import numpy as np

TIE_SEED = 20261128


def tie_keys(n: int, seed: int = TIE_SEED) -> np.ndarray:
    """A fixed random key per candidate column: ties are broken by it, never by item id."""
    return np.random.default_rng(seed).random(n)


def top_k(scores: np.ndarray, k: int, keys: np.ndarray) -> np.ndarray:
    """Column indices of the k best scores per row, ties broken by `keys` (higher first)."""
    k = min(k, scores.shape[1])
    out = np.empty((scores.shape[0], k), dtype=np.int64)
    for row in range(scores.shape[0]):
        s = scores[row]
        # Pre-select with argpartition, then order exactly with the tie key.
        part = np.argpartition(-s, k - 1)[:k] if k < len(s) else np.arange(len(s))
        threshold = s[part].min()
        pool = np.flatnonzero(s >= threshold)
        order = np.lexsort((-keys[pool], -s[pool]))
        out[row] = pool[order][:k]
    return out


def recall_at(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    return hits[:, :k].sum(1) / n_relevant


def ndcg_at(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits[:, :k] * discounts[: hits[:, :k].shape[1]]).sum(1)
    ideal = np.array([discounts[: min(int(n), k)].sum() for n in n_relevant])
    return dcg / ideal


def hit_rate_at(hits: np.ndarray, k: int) -> np.ndarray:
    return (hits[:, :k].sum(1) > 0).astype(np.float64)


def coverage_at(top: np.ndarray, k: int, n_candidates: int) -> float:
    return len(np.unique(top[:, :k])) / n_candidates


def per_user_metrics(
    top: np.ndarray, relevant: list[set[int]], candidate_ids: np.ndarray, ks: tuple[int, ...] = (10, 20)
) -> dict[str, np.ndarray]:
    ranked_ids = candidate_ids[top]
    hits = np.array([[int(i) in rel for i in row] for row, rel in zip(ranked_ids, relevant)], dtype=np.float64)
    n_relevant = np.array([len(r) for r in relevant], dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out[f"recall@{k}"] = recall_at(hits, n_relevant, k)
        out[f"ndcg@{k}"] = ndcg_at(hits, n_relevant, k)
    out["hitrate@10"] = hit_rate_at(hits, 10)
    return out


def recall_curve(top: np.ndarray, relevant: list[set[int]], candidate_ids: np.ndarray, max_k: int) -> list[float]:
    ranked_ids = candidate_ids[top]
    hits = np.array([[int(i) in rel for i in row] for row, rel in zip(ranked_ids, relevant)], dtype=np.float64)
    n_relevant = np.array([len(r) for r in relevant], dtype=np.float64)
    return [float(recall_at(hits, n_relevant, k).mean()) for k in range(1, max_k + 1)]


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean of per-user differences a - b and its standard error."""
    d = np.asarray(a) - np.asarray(b)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0


def standard_error(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0
