"""Deterministic splits, the same for every method: warm, cold-item and low-resource.

- warm: per user, the last 20% of positives by time are test; training keeps the user's
  interactions strictly before the first test positive (nothing from the future leaks in).
  Users with fewer than 5 positives only train.
- cold-item: 20% of the items with a positive are removed from training entirely; each user's
  positives among them are test, ranked among the cold items only.
- low-resource: the warm split with a random 10% of the training interactions kept.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from bertrec.evaluation.data import Dataset

MIN_POSITIVES_FOR_TEST = 5
TEST_SHARE = 0.2
COLD_ITEM_SHARE = 0.2
LOW_RESOURCE_SHARE = 0.1


@dataclass
class Split:
    name: str
    train: Dataset
    test: dict[str, set[int]]  # user -> held-out positive item ids
    candidate_ids: np.ndarray  # items each test user is ranked over
    seed: int = 0


def _by_user(dataset: Dataset) -> dict[str, np.ndarray]:
    order = np.lexsort((np.arange(len(dataset.users)), dataset.timestamps, dataset.users))
    groups: dict[str, list[int]] = defaultdict(list)
    for i in order:
        groups[dataset.users[i]].append(i)
    return {u: np.array(ix) for u, ix in groups.items()}


def warm_split(
    dataset: Dataset, seed: int = 0, name: str = "warm", min_positives: int = MIN_POSITIVES_FOR_TEST
) -> Split:
    positive = dataset.positive
    keep = np.zeros(len(dataset.users), dtype=bool)
    test: dict[str, set[int]] = {}
    for user, ix in _by_user(dataset).items():
        pos_ix = ix[positive[ix]]
        if len(pos_ix) < min_positives:
            keep[ix] = True
            continue
        n_test = int(np.ceil(TEST_SHARE * len(pos_ix)))
        held = pos_ix[-n_test:]
        cutoff = dataset.timestamps[held[0]]
        before = ix[dataset.timestamps[ix] < cutoff]
        if not positive[before].any():
            keep[ix] = True  # no history to recommend from
            continue
        keep[before] = True
        test[user] = set(dataset.item_ids[held].tolist())
    candidates = np.array([i.id for i in dataset.items], dtype=np.int64)
    return Split(name, dataset.subset(keep), test, candidates, seed)


def cold_item_split(dataset: Dataset, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    with_positive = np.unique(dataset.item_ids[dataset.positive])
    n_cold = int(round(COLD_ITEM_SHARE * len(with_positive)))
    cold = np.sort(rng.choice(with_positive, size=n_cold, replace=False))
    is_cold = np.isin(dataset.item_ids, cold)
    train = dataset.subset(~is_cold)
    users_with_history = set(train.users[train.positive].tolist())
    test: dict[str, set[int]] = defaultdict(set)
    for user, item in zip(dataset.users[is_cold & dataset.positive], dataset.item_ids[is_cold & dataset.positive]):
        if user in users_with_history:
            test[user].add(int(item))
    return Split("cold", train, dict(test), cold, seed)


def low_resource_split(dataset: Dataset, seed: int = 0) -> Split:
    warm = warm_split(dataset, seed, name="low-resource")
    rng = np.random.default_rng(seed)
    keep = rng.random(len(warm.train.users)) < LOW_RESOURCE_SHARE
    train = warm.train.subset(keep)
    has_history = set(train.users[train.positive].tolist())
    test = {u: items for u, items in warm.test.items() if u in has_history}
    return Split("low-resource", train, test, warm.candidate_ids, seed)


SPLITS = {"warm": warm_split, "cold": cold_item_split, "low-resource": low_resource_split}


def validation_split(split: Split, min_positives: int = MIN_POSITIVES_FOR_TEST) -> Split:
    """The same kind of split, cut from the training data, for tuning hyperparameters. With very
    little data, a lower `min_positives` lets more users give a validation positive."""
    if split.name == "cold":
        return cold_item_split(split.train, seed=split.seed + 1000)
    return warm_split(split.train, seed=split.seed, name=split.name, min_positives=min_positives)
