"""Features of (user, candidate item) pairs for the fusion re-ranker.

Scalars per pair plus the user's text vector (for the optional user ⊙ item projection). Collaborative
features are zero for items nobody has liked yet; the model learns to fall back on text, the
text-predicted popularity and the collaborative scores of the item's nearest liked items by text
for those (it is trained on cold-item lists as well as warm ones).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bertrec.rerank.signals import DAY, ItemSignals

SCALAR_FEATURES = (
    "text_cosine",
    "text_cosine_z",
    "max_history_cosine",
    "ease",
    "ease_z",
    "ease_recent",
    "ease_log_rank",
    "text_log_rank",
    "item_knn",
    "neighbour_ease",
    "neighbour_ease_z",
    "prior",
    "known",
    "recent_likes_30d",
    "recent_likes_365d",
    "item_age_days",
    "history_length",
)
RECENT_HISTORY = 20
RECENT_COLLABORATIVE = 10


@dataclass
class UserContext:
    """What the features need about one user: liked history as signal columns (oldest first),
    the vectors of the latest liked items, the pooled text vector, and the time of the user's
    latest like (the reference point for "recent")."""

    history_cols: np.ndarray
    recent_vectors: np.ndarray  # (<= RECENT_HISTORY, D)
    vector: np.ndarray  # L2-normalised; zeros when the history has no vector
    now: float


def _z(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-6)


def _log_rank(x: np.ndarray) -> np.ndarray:
    """log(1 + position) of each candidate in the list ordered by `x`: a scale-free view of a score
    whose range shifts with the amount of data the signals were fitted on."""
    ranks = np.empty(len(x), np.float32)
    ranks[np.argsort(-x, kind="stable")] = np.arange(len(x))
    return np.log1p(ranks)


def pair_features(user: UserContext, cols: np.ndarray, cand: np.ndarray, signals: ItemSignals) -> np.ndarray:
    """(len(cols), len(SCALAR_FEATURES)) float32 for one user's candidates. `cols` are the
    candidates' signal columns (-1 for items the signals have not seen), `cand` their vectors."""
    text = cand @ user.vector
    if len(user.recent_vectors):
        max_sim = (cand @ user.recent_vectors.T).max(1)
    else:
        max_sim = np.zeros(len(cols), np.float32)
    collaborative = signals.collaborative_scores(user.history_cols)
    ease = signals.gather(collaborative, cols)
    borrowed = signals.neighbour_scores(collaborative, cols, cand)
    # What the user liked lately predicts the next likes better than the whole history does.
    ease_recent = signals.gather(signals.collaborative_scores(user.history_cols[-RECENT_COLLABORATIVE:]), cols)
    knn = signals.gather(signals.collaborative_scores(user.history_cols, "knn"), cols)
    known = (signals.counts_of(cols) > 0).astype(np.float32)
    first_seen = np.where(cols >= 0, signals.first_seen[np.maximum(cols, 0)], np.inf)
    age = np.clip(user.now - first_seen, 0, None) / DAY
    age = np.where(np.isfinite(age), np.log1p(age), 0.0)
    history = np.full(len(cols), np.log1p(len(user.history_cols)), np.float32)
    columns = [
        text,
        _z(text),
        max_sim,
        ease,
        _z(ease),
        ease_recent,
        _log_rank(ease),
        _log_rank(text),
        knn,
        borrowed,
        _z(borrowed),
        signals.prior(cols, cand) / signals.pop_scale,
        known,
        np.log1p(signals.recent_likes(cols, user.now, 30)),
        np.log1p(signals.recent_likes(cols, user.now, 365)),
        age,
        history,
    ]
    return np.stack(columns, axis=1).astype(np.float32)
