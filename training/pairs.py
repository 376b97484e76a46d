"""Training pairs from interaction logs: items liked close together by the same user."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from bertrec.evaluation.data import Dataset


def liked_sequences(dataset: Dataset) -> list[list[int]]:
    """Each user's liked item ids, oldest first (ties by id), users in order of first appearance."""
    liked: dict[str, list[tuple[float, int]]] = defaultdict(list)
    pos = dataset.positive
    for user, item, ts in zip(dataset.users[pos], dataset.item_ids[pos], dataset.timestamps[pos]):
        liked[user].append((float(ts), int(item)))
    return [[i for _, i in sorted(history)] for history in liked.values()]


def co_liked_pairs(dataset: Dataset, window: int = 5, seed: int = 0) -> np.ndarray:
    """(anchor item id, positive item id) for each liked item and one of the `window` items the
    same user liked just before it, drawn at random. With the pooled user tower the service uses
    (a user is the mean of their liked items), pulling co-liked items together is exactly what
    makes a user's vector land near what they like next."""
    rng = np.random.default_rng(seed)
    pairs = []
    for items in liked_sequences(dataset):
        for t in range(1, len(items)):
            lo = max(0, t - window)
            anchor = items[rng.integers(lo, t)]
            if anchor != items[t]:
                pairs.append((anchor, items[t]))
    out = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    return out[rng.permutation(len(out))]


def log_q(pairs: np.ndarray) -> dict[int, float]:
    """log of each item's share among positives (the last column): subtracted from in-batch logits
    (logQ correction) so popular items are not pushed away just for appearing as negatives more often."""
    ids, counts = np.unique(pairs[:, -1], return_counts=True)
    return dict(zip(ids.tolist(), np.log(counts / counts.sum()).tolist()))
