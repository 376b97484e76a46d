"""Evaluation runs: tune each method on a validation split, score the test split, aggregate seeds."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bertrec.evaluation.methods import Method, TrainData
from bertrec.evaluation.metrics import coverage_at, per_user_metrics, recall_curve, tie_keys, top_k
from bertrec.evaluation.splits import Split, validation_split

logger = logging.getLogger(__name__)

PRIMARY = "ndcg@10"
CURVE_MAX_K = 50
USER_BATCH = 256


@dataclass
class MethodResult:
    method: str
    split: str
    seed: int
    params: dict
    per_user: dict[str, np.ndarray]  # metric -> value per test user (sorted user order)
    users: list[str]
    coverage10: float
    recall_curve: list[float]
    fit_s: float

    def mean(self, metric: str) -> float:
        return float(self.per_user[metric].mean())


def run_method(method: Method, split: Split, data: TrainData | None = None) -> MethodResult:
    data = data or TrainData.build(split.train)
    began = time.perf_counter()
    candidate_cols = np.array([data.column[int(i)] for i in split.candidate_ids], dtype=np.int64)
    if hasattr(method, "restrict"):  # two-stage methods retrieve among the split's candidates only
        method.restrict(candidate_cols)
    method.fit(data)
    fit_s = time.perf_counter() - began
    users = sorted(u for u in split.test if u in data.row)
    keys = tie_keys(len(candidate_cols))
    tops = []
    for start in range(0, len(users), USER_BATCH):
        batch = users[start : start + USER_BATCH]
        rows = np.array([data.row[u] for u in batch])
        scores = method.score(rows)[:, candidate_cols].astype(np.float64)
        seen = data.seen[rows][:, candidate_cols].toarray() > 0
        scores[seen] = -np.inf  # never recommend what the user already interacted with
        tops.append(top_k(scores, CURVE_MAX_K, keys))
    top = np.concatenate(tops) if tops else np.zeros((0, CURVE_MAX_K), np.int64)
    relevant = [split.test[u] for u in users]
    per_user = per_user_metrics(top, relevant, split.candidate_ids)
    coverage = coverage_at(top, 10, len(candidate_cols)) if len(top) else 0.0
    return MethodResult(
        method=method.name,
        split=split.name,
        seed=split.seed,
        params={},
        per_user=per_user,
        users=users,
        coverage10=coverage,
        recall_curve=recall_curve(top, relevant, split.candidate_ids, CURVE_MAX_K),
        fit_s=fit_s,
    )


def tune(factory: Callable[..., Method], grid: list[dict], split: Split) -> dict:
    """The grid point with the best validation NDCG@10 (validation cut from the training data)."""
    if len(grid) <= 1:
        return grid[0] if grid else {}
    val = validation_split(split)
    data = TrainData.build(val.train)
    scored = []
    for params in grid:
        result = run_method(factory(**params), val, data)
        scored.append((result.mean(PRIMARY), params))
        logger.info("  tune %s %s: validation %s %.4f", result.method, params, PRIMARY, scored[-1][0])
    return max(scored, key=lambda s: s[0])[1]
