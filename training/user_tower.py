"""Training examples and the learned layer of the user towers `bertrec train --user-tower` offers.

An example is a user's latest liked items before some moment and the item they liked at it:
`(history_items + 1)` ids, the history oldest first and right-aligned (-1 where a short history
leaves room), the target last. The item tower's co-liked pairs are the one-item case of this shape.
"""

from __future__ import annotations

import numpy as np

from bertrec.evaluation.data import Dataset
from bertrec.training.pairs import liked_sequences

NONE = -1  # no item in this history column


def history_examples(dataset: Dataset, history_items: int = 10, seed: int = 0) -> np.ndarray:
    """(user's latest `history_items` liked items before the t-th, the t-th) for each liked item
    after a user's first, shuffled; a target already in its history is left out (the service
    never recommends what the user has seen)."""
    rows = []
    for items in liked_sequences(dataset):
        for t in range(1, len(items)):
            recent = items[max(0, t - history_items) : t]
            if items[t] not in recent:
                rows.append([NONE] * (history_items - len(recent)) + recent + [items[t]])
    out = np.array(rows, dtype=np.int64).reshape(-1, history_items + 1)
    return out[np.random.default_rng(seed).permutation(len(out))]


def recency_weights(histories: np.ndarray, half_life: float) -> np.ndarray:
    """Weights of right-aligned history columns: pool_history's, 0.5 ** (n / half_life) for the
    n-th most recent, 0 where there is no item."""
    ages = np.arange(histories.shape[1] - 1, -1, -1, dtype=np.float32)
    return np.where(histories != NONE, np.power(np.float32(0.5), ages / np.float32(half_life)), np.float32(0))


def pooling_matrix(histories: np.ndarray, half_life: float) -> tuple[np.ndarray, np.ndarray]:
    """(distinct item ids of the histories, users x ids weights): the recency-weighted sums of
    the histories are `matrix @ vectors[ids]`, each distinct item encoded once."""
    weights = recency_weights(histories, half_life)
    present = histories != NONE
    ids, column = np.unique(histories[present], return_inverse=True)
    matrix = np.zeros((len(histories), len(ids)), np.float32)
    np.add.at(matrix, (np.nonzero(present)[0], column), weights[present])
    return ids, matrix


def residual_layer(dim: int):
    """The pooled tower's learned layer W in `v + W v`: W starts at zero, so before training the
    tower is plain pooling."""
    import torch

    layer = torch.nn.Linear(dim, dim, bias=False)
    torch.nn.init.zeros_(layer.weight)
    return layer
