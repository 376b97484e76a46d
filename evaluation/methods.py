"""Recommenders compared offline: classical baselines, zero-shot text, and text plus popularity.

Each method is fitted on a split's training data and scores every catalogue item for a batch of
users; the runner masks what may not be recommended and ranks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import scipy.sparse as sp

from bertrec.evaluation.data import Dataset
from bertrec.server.users import UserTower
from bertrec.store import HistoryEntry

logger = logging.getLogger(__name__)


@dataclass
class TrainData:
    """A split's training interactions as matrices over the full catalogue."""

    dataset: Dataset
    item_ids: np.ndarray  # column -> item id (whole catalogue)
    column: dict[int, int]
    users: list[str]  # row -> user id
    row: dict[str, int]
    positives: sp.csr_matrix  # users x items, 1 where the user liked the item
    seen: sp.csr_matrix  # users x items, 1 where the user interacted at all
    histories: dict[str, list[HistoryEntry]] = field(default_factory=dict)  # liked items, oldest first

    @classmethod
    def build(cls, train: Dataset) -> TrainData:
        item_ids = np.array([i.id for i in train.items], dtype=np.int64)
        column = {int(i): c for c, i in enumerate(item_ids)}
        users = sorted(set(train.users.tolist()))
        row = {u: r for r, u in enumerate(users)}
        rows = np.array([row[u] for u in train.users], dtype=np.int64)
        cols = np.array([column[int(i)] for i in train.item_ids], dtype=np.int64)
        shape = (len(users), len(item_ids))
        pos = train.positive
        positives = sp.csr_matrix((np.ones(pos.sum()), (rows[pos], cols[pos])), shape=shape)
        positives.data[:] = 1.0  # duplicates collapse to 1
        seen = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=shape)
        seen.data[:] = 1.0
        histories: dict[str, list[HistoryEntry]] = {}
        order = np.argsort(train.timestamps, kind="stable")
        for i in order[pos[order]]:
            histories.setdefault(train.users[i], []).append(
                HistoryEntry(int(train.item_ids[i]), float(train.timestamps[i]), 1.0)
            )
        return cls(train, item_ids, column, users, row, positives.tocsr(), seen.tocsr(), histories)


class Method(Protocol):
    name: str

    def fit(self, data: TrainData) -> None: ...

    def score(self, rows: np.ndarray) -> np.ndarray: ...


def _standardise(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-9)


class Random:
    name = "random"
    grid: list[dict] = [{}]

    def __init__(self, seed: int = 0):
        self.seed = seed

    def fit(self, data: TrainData) -> None:
        self.n_items = len(data.item_ids)

    def score(self, rows: np.ndarray) -> np.ndarray:
        return np.random.default_rng(self.seed).random((len(rows), self.n_items))


class Popularity:
    name = "popularity"
    grid: list[dict] = [{}]

    def fit(self, data: TrainData) -> None:
        self.counts = np.asarray(data.positives.sum(0)).ravel()

    def score(self, rows: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(rows), len(self.counts))).copy()


class ItemKNN:
    """Cosine item-item neighbourhoods on the liked-items matrix, top `k` neighbours per item."""

    name = "itemknn"
    grid = [{"k": k} for k in (20, 50, 100, 200)]

    def __init__(self, k: int = 100):
        self.k = k

    def fit(self, data: TrainData) -> None:
        x = data.positives.astype(np.float32)
        norms = np.sqrt(np.asarray(x.multiply(x).sum(0)).ravel()) + 1e-9
        sim = (x.T @ x).toarray() / norms[:, None] / norms[None, :]
        np.fill_diagonal(sim, 0.0)
        if self.k < sim.shape[0]:
            cut = np.argpartition(-sim, self.k, axis=0)[self.k :]
            np.put_along_axis(sim, cut, 0.0, axis=0)
        self.sim = sim
        self.x = x

    def score(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.x[rows] @ self.sim)


class EASE:
    """Steck 2019: closed-form item-item weights with a zero diagonal; fitted on items with positives."""

    name = "ease"
    grid = [{"l2": v} for v in (25.0, 50.0, 100.0, 250.0, 500.0, 1000.0)]

    def __init__(self, l2: float = 500.0):
        self.l2 = l2

    def fit(self, data: TrainData) -> None:
        x = data.positives
        self.active = np.flatnonzero(np.asarray(x.sum(0)).ravel() > 0)
        xa = x[:, self.active].astype(np.float64)
        gram = (xa.T @ xa).toarray()
        gram[np.diag_indices_from(gram)] += self.l2
        p = np.linalg.inv(gram)
        b = p / (-np.diag(p))
        np.fill_diagonal(b, 0.0)
        self.b = b.astype(np.float32)
        self.xa = xa.astype(np.float32).tocsr()
        self.n_items = x.shape[1]

    def score(self, rows: np.ndarray) -> np.ndarray:
        out = np.zeros((len(rows), self.n_items), dtype=np.float32)
        out[:, self.active] = np.asarray(self.xa[rows] @ self.b)
        return out


class ALS:
    """Implicit-feedback matrix factorisation (Hu et al.) from the `implicit` package."""

    name = "als"
    grid = [
        {"factors": f, "regularization": r, "alpha": a}
        for f in (64, 128)
        for r in (0.05, 0.5, 5.0)
        for a in (1.0, 2.0, 10.0)
    ]

    def __init__(self, factors: int = 64, regularization: float = 0.05, alpha: float = 2.0, iterations: int = 15):
        self.params = {"factors": factors, "regularization": regularization, "alpha": alpha, "iterations": iterations}

    def fit(self, data: TrainData) -> None:
        from implicit.als import AlternatingLeastSquares

        model = AlternatingLeastSquares(random_state=0, **self.params)
        model.fit(data.positives.astype(np.float32), show_progress=False)
        self.users = np.asarray(model.user_factors)
        self.items = np.asarray(model.item_factors)

    def score(self, rows: np.ndarray) -> np.ndarray:
        return self.users[rows] @ self.items.T


class ZeroShot:
    """The pretrained encoder, no fine-tuning: the service's own recipe (recency-weighted mean of
    the vectors of liked items, cosine to every item). With a fine-tuned checkpoint, `tower` is
    the user tower it was trained with (what the service then runs too)."""

    name = "zero-shot"
    grid: list[dict] = [{}]

    def __init__(self, item_vectors: np.ndarray, half_life: float = 20.0, tower: UserTower | None = None):
        self.item_vectors = item_vectors  # rows in catalogue order
        self.half_life = half_life
        self.tower = tower or UserTower()

    def user_vectors(self, data: TrainData, rows: np.ndarray) -> np.ndarray:
        dim = self.item_vectors.shape[1]
        histories = [data.histories.get(data.users[r], []) for r in rows]
        if self.tower.kind == "history-text":
            return self.tower.text_vectors(histories, {i.id: i.text for i in data.dataset.items}, dim)
        by_id = {int(i): self.item_vectors[c] for i, c in data.column.items()}
        out = np.zeros((len(rows), dim), dtype=np.float32)
        for n, history in enumerate(histories):
            vector = self.tower.pooled(history, by_id, self.half_life, dim)
            if vector is not None:
                out[n] = vector
        return out

    def fit(self, data: TrainData) -> None:
        self.data = data

    def score(self, rows: np.ndarray) -> np.ndarray:
        return self.user_vectors(self.data, rows) @ self.item_vectors.T


class GenreProfile:
    """Users as the normalised genre histogram of what they liked; items as their genre set."""

    name = "genre-profile"
    grid: list[dict] = [{}]

    def fit(self, data: TrainData) -> None:
        genres = sorted({g for i in data.dataset.items for g in i.metadata.get("genres", [])})
        index = {g: n for n, g in enumerate(genres)}
        m = np.zeros((len(data.item_ids), max(1, len(genres))), dtype=np.float32)
        for c, item in enumerate(data.dataset.items):
            for g in item.metadata.get("genres", []):
                m[c, index[g]] = 1.0
        m /= np.linalg.norm(m, axis=1, keepdims=True) + 1e-9
        self.item_genres = m
        self.x = data.positives.astype(np.float32)

    def score(self, rows: np.ndarray) -> np.ndarray:
        users = np.asarray(self.x[rows] @ self.item_genres)
        users /= np.linalg.norm(users, axis=1, keepdims=True) + 1e-9
        return users @ self.item_genres.T


class TextPlusPopularity:
    """Zero-shot text similarity plus a popularity prior: observed popularity for items with
    interactions, popularity predicted from the item's text (ridge on its vector) for items
    without. One model for warm and cold items alike."""

    name = "zero-shot + popularity"
    grid = [{"weight": w, "ridge": r} for w in (0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2) for r in (1.0, 10.0, 100.0)]

    def __init__(
        self, item_vectors: np.ndarray, weight: float = 0.2, ridge: float = 10.0, tower: UserTower | None = None
    ):
        self.zero_shot = ZeroShot(item_vectors, tower=tower)
        self.weight = weight
        self.ridge = ridge

    def fit(self, data: TrainData) -> None:
        self.zero_shot.fit(data)
        counts = np.asarray(data.positives.sum(0)).ravel()
        log_pop = np.log1p(counts)
        warm = counts > 0
        v = self.zero_shot.item_vectors
        xw = v[warm]
        centre = log_pop[warm].mean()
        coef = np.linalg.solve(xw.T @ xw + self.ridge * np.eye(v.shape[1]), xw.T @ (log_pop[warm] - centre))
        predicted = v @ coef + centre
        prior = np.where(warm, log_pop, predicted)
        self.prior = _standardise(prior).astype(np.float32)

    def score(self, rows: np.ndarray) -> np.ndarray:
        return self.zero_shot.score(rows) + self.weight * self.prior[None, :]
