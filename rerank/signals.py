"""Item signals fitted from the interaction log: liked counts, time-stamped popularity, a sparse
EASE item-item model, popularity predicted from text for items nobody has touched, and each
item's nearest liked items by text (how a cold item borrows the collaborative signal of the
liked items that read like it).

Everything is indexed by catalogue column so the evaluation (matrices over the catalogue) and the
service (rows from the store) share one implementation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

DAY = 86_400.0
TEXT_NEIGHBOURS = 20
EXACT_NEIGHBOURS = 50_000  # liked items searched exactly for their text neighbours; HNSW beyond
EASE_MAX_ITEMS = 20_000  # EASE inverts an items x items float64 matrix: 20k items peak ~7 GB


@dataclass
class Interactions:
    """Liked interactions as parallel arrays over catalogue columns, oldest first per user."""

    user_rows: np.ndarray  # int64
    item_cols: np.ndarray  # int64
    timestamps: np.ndarray  # float64 seconds
    n_users: int
    n_items: int

    def matrix(self) -> sp.csr_matrix:
        x = sp.csr_matrix(
            (np.ones(len(self.user_rows), np.float32), (self.user_rows, self.item_cols)),
            shape=(self.n_users, self.n_items),
        )
        x.data[:] = 1.0  # repeated likes count once
        return x


def fit_ease(x: sp.csr_matrix, l2: float, keep: int, max_items: int = EASE_MAX_ITEMS) -> sp.csr_matrix:
    """Steck's EASE on items with at least one like, sparsified to the `keep` largest weights per
    target item so serving holds O(items * keep) floats instead of a dense items^2 matrix.

    The fit inverts a dense matrix over those items, so only the `max_items` most-liked take part
    (memory grows with its square, time with its cube); the long tail beyond gets no EASE score
    and is treated like a cold item (text, predicted popularity, its liked text neighbours)."""
    n_items = x.shape[1]
    likes = np.asarray(x.sum(0)).ravel()
    active = np.flatnonzero(likes > 0)
    if len(active) > max_items:
        active = np.sort(active[np.argsort(-likes[active], kind="stable")[:max_items]])
    if len(active) == 0:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    xa = x[:, active].astype(np.float64)
    gram = (xa.T @ xa).toarray()
    gram[np.diag_indices_from(gram)] += l2
    b = np.linalg.inv(gram)
    del gram  # peak memory: two items^2 float64 matrices, not three
    b /= -np.diag(b).copy()
    np.fill_diagonal(b, 0.0)
    b = b.astype(np.float32)
    if keep < len(active):
        cut = np.argpartition(-np.abs(b), keep, axis=0)[keep:]
        np.put_along_axis(b, cut, 0.0, axis=0)
    sparse = sp.coo_matrix(b)
    return sp.csr_matrix(
        (sparse.data, (active[sparse.row], active[sparse.col])), shape=(n_items, n_items), dtype=np.float32
    )


def fit_item_knn(x: sp.csr_matrix, keep: int) -> sp.csr_matrix:
    """Cosine similarity between items' liker sets, the `keep` nearest neighbours per item."""
    xf = x.astype(np.float32).tocsc()
    norms = np.sqrt(np.asarray(xf.multiply(xf).sum(0)).ravel()) + 1e-9
    sim = (xf.T @ xf).tocsr()
    sim = sp.diags(1 / norms) @ sim @ sp.diags(1 / norms)
    sim.setdiag(0.0)
    sim.eliminate_zeros()
    sim = sim.tocsc()
    rows, cols, vals = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.float32)]
    for c in range(sim.shape[1]):
        lo, hi = sim.indptr[c], sim.indptr[c + 1]
        data, index = sim.data[lo:hi], sim.indices[lo:hi]
        if len(data) > keep:
            top = np.argpartition(-data, keep)[:keep]
            data, index = data[top], index[top]
        rows.append(index)
        cols.append(np.full(len(index), c))
        vals.append(data)
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=sim.shape, dtype=np.float32
    )


def fit_popularity_from_text(
    vectors: np.ndarray, log_pop: np.ndarray, known: np.ndarray, ridge: float
) -> tuple[np.ndarray, float]:
    """Ridge regression from item vectors to log popularity, fitted on items with interactions:
    how popular an item nobody has touched yet is likely to become, from its text alone."""
    xw = vectors[known].astype(np.float64)
    if len(xw) < 2:
        return np.zeros(vectors.shape[1], np.float32), 0.0
    centre = float(log_pop[known].mean())
    coef = np.linalg.solve(xw.T @ xw + ridge * np.eye(vectors.shape[1]), xw.T @ (log_pop[known] - centre))
    return coef.astype(np.float32), centre


class TextNeighbours:
    """The `k` nearest items with likes, by text, of any vector, an item never its own neighbour:
    exact inner product (FAISS flat) over the liked items' vectors up to `exact_up_to` of them,
    HNSW beyond (every item's neighbours are searched at each refit: exact search there grows
    with the square of the catalogue)."""

    def __init__(
        self, vectors: np.ndarray, known: np.ndarray, k: int = TEXT_NEIGHBOURS, exact_up_to: int = EXACT_NEIGHBOURS
    ):
        import faiss

        self.known_cols = np.flatnonzero(known)
        self.k = min(k, len(self.known_cols))
        dim = vectors.shape[1]
        if len(self.known_cols) <= exact_up_to:
            self.index = faiss.IndexFlatIP(dim)
        else:
            self.index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efSearch = 128
        if len(self.known_cols):
            self.index.add(np.ascontiguousarray(vectors[self.known_cols], np.float32))
        self.cols, self.sims = self.search(vectors, np.arange(len(vectors)))

    def search(self, vectors: np.ndarray, own_cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(cols, weights), each (len(vectors), k): neighbour columns (-1 where none) and their
        similarities clipped at 0. `own_cols`: each vector's own column (-1 for none)."""
        n = len(vectors)
        if self.k == 0 or n == 0:
            return np.full((n, max(self.k, 1)), -1, np.int64), np.zeros((n, max(self.k, 1)), np.float32)
        sims, ix = self.index.search(np.ascontiguousarray(vectors, np.float32), min(self.k + 1, len(self.known_cols)))
        cols = np.where(ix >= 0, self.known_cols[np.maximum(ix, 0)], -1)
        sims = np.where((cols == own_cols[:, None]) | (cols < 0), -np.inf, sims)
        order = np.argsort(-sims, axis=1, kind="stable")[:, : self.k]  # drop self, keep the k best
        cols = np.take_along_axis(cols, order, 1)
        sims = np.take_along_axis(sims, order, 1)
        return np.where(np.isfinite(sims), cols, -1), np.clip(np.nan_to_num(sims, neginf=0.0), 0, None)

    def of(self, cols: np.ndarray, vectors: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Neighbours of candidates: from the table for fitted columns, searched for the rest
        (`vectors`, aligned with `cols`, is needed only when some column is -1)."""
        out_cols = self.cols[np.maximum(cols, 0)].copy()
        out_sims = self.sims[np.maximum(cols, 0)].copy()
        missing = np.flatnonzero(cols < 0)
        if len(missing):
            assert vectors is not None, "items without a column need their vectors"
            out_cols[missing], out_sims[missing] = self.search(vectors[missing], cols[missing])
        return out_cols, out_sims

    @staticmethod
    def borrow(scores: np.ndarray, cols: np.ndarray, sims: np.ndarray) -> np.ndarray:
        """Similarity-weighted mean of per-column `scores` over each row's neighbours."""
        picked = np.where(cols >= 0, scores[np.maximum(cols, 0)], 0.0)
        return ((picked * sims).sum(1) / (sims.sum(1) + 1e-9)).astype(np.float32)


@dataclass
class ItemSignals:
    counts: np.ndarray  # likes per item column
    text_pop_coef: np.ndarray  # log popularity ~ vector @ coef + centre, for items without likes
    text_pop_centre: float
    first_seen: np.ndarray  # first like per item (inf when never)
    like_times: list[np.ndarray]  # sorted like timestamps per item
    ease: sp.csr_matrix  # items x items, sparse
    knn: sp.csr_matrix  # items x items cosine neighbours, sparse
    pop_scale: float  # std of log popularity over known items, to put both priors on one scale
    neighbours: TextNeighbours

    @classmethod
    def fit(
        cls,
        interactions: Interactions,
        vectors: np.ndarray,
        l2: float = 100.0,
        keep: int = 256,
        ease_max_items: int = EASE_MAX_ITEMS,
    ) -> ItemSignals:
        x = interactions.matrix()
        counts = np.asarray(x.sum(0)).ravel().astype(np.float32)
        log_pop = np.log1p(counts)
        known = counts > 0
        coef, centre = fit_popularity_from_text(vectors, log_pop, known, ridge=10.0)
        order = np.lexsort((interactions.timestamps, interactions.item_cols))
        cols = interactions.item_cols[order]
        times = interactions.timestamps[order]
        bounds = np.searchsorted(cols, np.arange(interactions.n_items + 1))
        like_times = [times[bounds[c] : bounds[c + 1]] for c in range(interactions.n_items)]
        first_seen = np.array([t[0] if len(t) else np.inf for t in like_times])
        scale = float(log_pop[known].std()) if known.sum() > 1 else 1.0
        ease = fit_ease(x, l2, keep, ease_max_items)
        knn = fit_item_knn(x, keep=100)
        neighbours = TextNeighbours(vectors, known)
        return cls(counts, coef, centre, first_seen, like_times, ease, knn, scale or 1.0, neighbours)

    def prior(self, cols: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Observed log popularity where known, text-predicted where not (including items the
        signals have no column for, `cols == -1`): one prior for every item."""
        counts = self.counts_of(cols)
        predicted = vectors @ self.text_pop_coef + self.text_pop_centre
        return np.where(counts > 0, np.log1p(counts), predicted).astype(np.float32)

    def counts_of(self, cols: np.ndarray) -> np.ndarray:
        return np.where(cols >= 0, self.counts[np.maximum(cols, 0)], 0.0).astype(np.float32)

    def gather(self, scores: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Per-column scores for candidates; 0 for items without a column."""
        return np.where(cols >= 0, scores[np.maximum(cols, 0)], 0.0).astype(np.float32)

    def collaborative_scores(self, history_cols: np.ndarray, model: str = "ease") -> np.ndarray:
        """EASE (or item-kNN) score of every item for a user who liked `history_cols`."""
        weights = self.ease if model == "ease" else self.knn
        if len(history_cols) == 0:
            return np.zeros(weights.shape[1], np.float32)
        return np.asarray(weights[np.unique(history_cols)].sum(0)).ravel()

    def neighbour_scores(self, scores: np.ndarray, cols: np.ndarray, vectors: np.ndarray | None = None) -> np.ndarray:
        """Per-column collaborative `scores` as the candidates' nearest liked items by text have
        them: a cold item reads like the liked items the user's collaborative model favours."""
        n_cols, sims = self.neighbours.of(cols, vectors)
        return TextNeighbours.borrow(scores, n_cols, sims)

    def recent_likes(self, cols: np.ndarray, now: float, window_days: float) -> np.ndarray:
        """Likes each item got in the `window_days` before `now`."""
        out = np.zeros(len(cols), np.float32)
        for n, c in enumerate(cols):
            if c < 0:
                continue
            t = self.like_times[c]
            out[n] = np.searchsorted(t, now, "right") - np.searchsorted(t, now - window_days * DAY, "left")
        return out
