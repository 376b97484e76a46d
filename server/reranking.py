"""The trained re-ranker in the serving path: collaborative signals refitted from the store in the
background, collaborative candidates, and fusion-model scores for a user's candidates; with a
cross-encoder folder, the cross-encoder then re-scores the fusion model's top-N."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertrec.config import RerankConfig
from bertrec.rerank.cross_encoder import history_text
from bertrec.rerank.features import RECENT_HISTORY, UserContext, pair_features
from bertrec.rerank.loading import load_reranker
from bertrec.rerank.signals import Interactions, ItemSignals
from bertrec.store import HistoryEntry, Store

logger = logging.getLogger(__name__)

POLL_S = 1.0


@dataclass(frozen=True)
class FittedSignals:
    model: str  # encoder whose item vectors the signals were fitted with
    store_version: int
    signals: ItemSignals
    column: dict[int, int]  # item id -> signal column
    ids: np.ndarray  # signal column -> item id
    vectors: np.ndarray  # signal column -> item vector
    by_prior: np.ndarray  # signal columns, highest prior (observed or text-predicted popularity) first
    fitted_at: float


class ServingReranker:
    def __init__(self, path: str, store: Store, config: RerankConfig, half_life: float):
        loaded = load_reranker(path)
        self.kind = loaded.kind
        self.model, self.card = loaded.fusion, loaded.fusion_card
        self.cascade = loaded.cascade  # None for a fusion folder
        self.name = Path(path).name
        self.store = store
        self.config = config
        self.half_life = half_life
        self.fitted: FittedSignals | None = None
        self._task: asyncio.Task | None = None

    def check_encoder(self, dim: int, encoder: str) -> None:
        if self.card["dim"] != dim:
            raise ValueError(f"re-ranker {self.name} expects {self.card['dim']}-dim vectors; the encoder gives {dim}")
        trained_with = self.card.get("encoder", "")
        if trained_with and trained_with != encoder:
            logger.warning("re-ranker %s was trained on %s vectors; serving %s", self.name, trained_with, encoder)

    def ready_for(self, encoder: str) -> bool:
        return self.fitted is not None and self.fitted.model == encoder

    def fit(self, encoder: str) -> FittedSignals:
        """Collaborative signals over every item that has a vector for `encoder` (blocking)."""
        began = time.perf_counter()
        version = self.store.version()
        chunks = list(self.store.iter_vectors(encoder))
        ids = np.concatenate([c[0] for c in chunks]) if chunks else np.zeros(0, np.int64)
        vectors = np.concatenate([c[1] for c in chunks]) if chunks else np.zeros((0, self.card["dim"]), np.float32)
        column = {int(i): c for c, i in enumerate(ids)}
        users, items, times = self.store.liked_interactions()
        cols = np.array([column.get(int(i), -1) for i in items], np.int64)
        keep = cols >= 0
        user_row: dict[str, int] = {}
        rows = np.array([user_row.setdefault(u, len(user_row)) for u in users], np.int64)
        interactions = Interactions(rows[keep], cols[keep], times[keep], len(user_row), len(ids))
        signals = ItemSignals.fit(
            interactions, vectors, self.card["ease_l2"], self.card["ease_keep"], self.config.ease_max_items
        )
        took = time.perf_counter() - began
        logger.info("re-ranker signals fitted: %d items, %d likes, %.1fs", len(ids), int(keep.sum()), took)
        by_prior = np.argsort(-signals.prior(np.arange(len(ids)), vectors), kind="stable")
        return FittedSignals(encoder, version, signals, column, ids, vectors, by_prior, time.time())

    async def run(self, current_encoder) -> None:
        """Refit when the encoder changes, or when the store changed and the interval has passed."""
        while True:
            encoder = current_encoder()
            fitted = self.fitted
            stale = fitted is None or fitted.model != encoder
            if not stale and time.time() - fitted.fitted_at >= self.config.refit_interval_s:
                stale = await asyncio.to_thread(self.store.version) != fitted.store_version
            if stale:
                try:
                    self.fitted = await asyncio.to_thread(self.fit, encoder)
                except Exception:  # keep serving the previous signals; retry next round
                    logger.exception("re-ranker refit failed")
            await asyncio.sleep(POLL_S)

    def start(self, current_encoder) -> None:
        self._task = asyncio.ensure_future(self.run(current_encoder))

    def stop(self) -> None:
        if self._task:
            self._task.cancel()

    def _context(self, fitted: FittedSignals, history: list[HistoryEntry], user_vector: np.ndarray) -> UserContext:
        cols = np.array([fitted.column.get(e.item_id, -1) for e in history if e.weight > 0], np.int64)
        cols = cols[cols >= 0]
        now = history[-1].timestamp if history else time.time()
        return UserContext(cols, fitted.vectors[cols[-RECENT_HISTORY:]], user_vector, now)

    def extra_candidates(self, history: list[HistoryEntry], exclude: set[int]) -> list[int]:
        """Candidates text retrieval would miss: the collaborative model's best items for this
        history, the items without likes whose nearest liked items by text it favours, then the
        highest-prior items (popular, or cold with text that predicts likes)."""
        fitted = self.fitted
        if fitted is None:
            return []
        out: list[int] = []
        context = self._context(fitted, history, np.zeros(fitted.vectors.shape[1], np.float32))
        signals = fitted.signals
        if len(context.history_cols):
            collaborative = signals.collaborative_scores(context.history_cols)
            known = signals.counts > 0
            best_known = np.where(known, collaborative, -np.inf)
            out = self._best(fitted, best_known, exclude, self.config.collaborative_candidates)
            if self.config.neighbour_candidates and not known.all():
                cold = np.flatnonzero(~known)
                borrowed = np.full(len(known), -np.inf, np.float32)
                borrowed[cold] = signals.neighbour_scores(collaborative, cold)
                out += self._best(fitted, borrowed, exclude | set(out), self.config.neighbour_candidates)
        taken = exclude | set(out)
        popular = (int(fitted.ids[c]) for c in fitted.by_prior[: self.config.popular_candidates + len(taken)])
        out += [i for i in popular if i not in taken][: self.config.popular_candidates]
        return out

    @staticmethod
    def _best(fitted: FittedSignals, scores: np.ndarray, exclude: set[int], n: int) -> list[int]:
        """Ids of the `n` best finite `scores` (per signal column), skipping `exclude`."""
        if n <= 0:
            return []
        top = np.argsort(-scores)[: n + len(exclude)]
        ids = [int(fitted.ids[c]) for c in top if np.isfinite(scores[c])]
        return [i for i in ids if i not in exclude][:n]

    def score(
        self,
        history: list[HistoryEntry],
        user_vector: np.ndarray,
        ids: np.ndarray,
        vectors: np.ndarray,
        texts: dict[int, str] | None = None,
    ) -> np.ndarray:
        """Fusion-model scores; items unknown to the signals (new, or raw texts) are scored as cold.
        A cross-encoder then re-scores the fusion top-N (`rerank.cross_encoder_top_n`), with item
        texts from `texts` or the store (blocking: call off the event loop)."""
        fitted = self.fitted
        assert fitted is not None
        context = self._context(fitted, history, user_vector)
        cols = np.array([fitted.column.get(int(i), -1) for i in ids], np.int64)
        scalars = pair_features(context, cols, vectors, fitted.signals)
        scores = self.model.score(scalars, user_vector, vectors.astype(np.float32))
        if self.cascade is None:
            return scores
        return self._cross_encode(history, ids, scores, texts or {})

    def _cross_encode(
        self, history: list[HistoryEntry], ids: np.ndarray, scores: np.ndarray, texts: dict[int, str]
    ) -> np.ndarray:
        cascade = self.cascade
        assert cascade is not None
        top = cascade.top(scores, self.config.cross_encoder_top_n)
        model = cascade.cross_encoder
        liked = [e.item_id for e in history if e.weight > 0][-model.history_items :] if model.history_items else []
        wanted = [i for i in dict.fromkeys([*liked, *(int(i) for i in ids[top])]) if i not in texts]
        if wanted:
            texts = {**texts, **{i: item.text for i, item in self.store.get_items(wanted).items()}}
        keep = np.array([int(ids[t]) in texts for t in top], bool)  # deleted since retrieval: no text
        top = top[keep]
        user = history_text([texts[i] for i in liked if i in texts], model.history_items)
        second = model.score(user, [texts[int(ids[t])] for t in top])
        return cascade.combine(scores, top, second)
