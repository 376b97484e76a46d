"""bertrec's full pipeline as an offline method: text + collaborative retrieval, then the fusion
re-ranker (optionally followed by the cross-encoder on its top-N), trained on validation cuts of the
same training data the baselines see."""

from __future__ import annotations

import logging

import numpy as np

from bertrec.evaluation.methods import TrainData
from bertrec.evaluation.splits import cold_item_split, warm_split
from bertrec.rerank.cross_encoder import CrossEncoderTraining, history_text, train_cascade
from bertrec.rerank.features import pair_features
from bertrec.rerank.signals import Interactions, ItemSignals
from bertrec.rerank.training import CandidateLists, RerankTraining, build_lists, retrieve, train_reranker, user_contexts

logger = logging.getLogger(__name__)

VALIDATION_SEED_OFFSET = 1000  # the cold validation cuts must not reuse the test draw
COLD_CUTS = 2


def interactions_of(data: TrainData) -> Interactions:
    users, cols, times = [], [], []
    for user, entries in data.histories.items():
        for e in entries:
            users.append(data.row[user])
            cols.append(data.column[e.item_id])
            times.append(e.timestamp)
    return Interactions(
        np.array(users, np.int64), np.array(cols, np.int64), np.array(times), len(data.users), len(data.item_ids)
    )


def _held_out(data: TrainData, test: dict[str, set[int]]) -> dict[int, set[int]]:
    return {data.row[u]: {data.column[i] for i in items} for u, items in test.items() if u in data.row}


def _seen(data: TrainData) -> dict[int, set[int]]:
    return {r: set(data.seen[r].indices.tolist()) for r in range(len(data.users))}


def validation_lists(data: TrainData, vectors: np.ndarray, config: RerankTraining, seed: int) -> CandidateLists:
    """Warm-cut and cold-cut candidate lists from `data`'s training interactions."""
    parts = []
    everything = np.arange(len(data.item_ids))
    warm = warm_split(data.dataset)
    earlier = warm_split(warm.train)  # a second, earlier time slice: more lists to learn from
    cuts = [("warm", warm, everything), ("warm", earlier, everything)]
    for n in range(COLD_CUTS):
        cold = cold_item_split(data.dataset, seed=seed + VALIDATION_SEED_OFFSET + n)
        cuts.append(("cold", cold, np.array([data.column[int(i)] for i in cold.candidate_ids], np.int64)))
    for kind, cut, allowed in cuts:
        cut_data = TrainData.build(cut.train)
        parts.append(
            build_lists(
                interactions_of(cut_data),
                _held_out(cut_data, cut.test),
                _seen(cut_data),
                allowed,
                vectors,
                config,
                kind,
            )
        )
    return CandidateLists.concat(parts)


PIPELINE = "bertrec: retrieval + re-ranker"


class RerankPipeline:
    name = PIPELINE
    grid: list[dict] = [{}]

    def __init__(self, item_vectors: np.ndarray, config: RerankTraining | None = None, seed: int = 0):
        self.vectors = item_vectors
        self.config = config or RerankTraining()
        self.seed = seed
        self.allowed: np.ndarray | None = None

    def restrict(self, candidate_cols: np.ndarray) -> None:
        """Rank only among these columns (the cold split ranks cold items among themselves)."""
        self.allowed = candidate_cols

    def fit(self, data: TrainData) -> None:
        self.train(validation_lists(data, self.vectors, self.config, self.seed), data)
        interactions = interactions_of(data)
        self.signals = ItemSignals.fit(interactions, self.vectors, self.config.ease_l2, self.config.ease_keep)
        self.contexts = user_contexts(interactions, self.vectors, self.config.half_life)
        self.data = data

    def train(self, lists: CandidateLists, data: TrainData) -> None:
        """The second stage, from the validation cuts' candidate lists (sets `self.model`)."""
        self.model, self.summary = train_reranker(lists, self.vectors, self.config)
        logger.info(
            "re-ranker: %d lists %s, hold-out NDCG@10 %.4f after %d epochs",
            self.summary["lists"],
            self.summary["kinds"],
            self.summary["holdout_ndcg@10"],
            self.summary["epochs"],
        )

    def score(self, rows: np.ndarray) -> np.ndarray:
        allowed_all = self.allowed if self.allowed is not None else np.arange(len(self.vectors))
        out = np.full((len(rows), len(self.vectors)), -1e6, np.float32)
        ranked = []
        for n, row in enumerate(rows):
            context = self.contexts.get(int(row))
            if context is None:
                continue
            out[n] += self.vectors @ context.vector  # beyond the candidates: text order
            seen = self.data.seen[row].indices
            allowed = allowed_all[~np.isin(allowed_all, seen)]
            cols = retrieve(context, self.signals, self.vectors, allowed, self.config)
            scalars = pair_features(context, cols, self.vectors[cols], self.signals)
            ranked.append((n, int(row), cols, self.model.score(scalars, context.vector, self.vectors[cols])))
        for (n, _, cols, _), scores in zip(ranked, self.rescore(ranked)):
            out[n, cols] = scores
        return out

    def rescore(self, ranked: list[tuple[int, int, np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """Final scores of each user's candidates from (position, user row, columns, fusion scores)."""
        return [scores for _, _, _, scores in ranked]


CASCADE = "bertrec: retrieval + cross-encoder"


class CrossEncoderPipeline(RerankPipeline):
    """The fusion pipeline, then a cross-encoder over (history titles, item text) pairs that re-scores
    each user's fusion top-N: the cascade `bertrec serve` runs with a cross-encoder folder."""

    name = CASCADE

    def __init__(
        self,
        item_vectors: np.ndarray,
        config: RerankTraining | None = None,
        seed: int = 0,
        cross_encoder: CrossEncoderTraining | None = None,
    ):
        super().__init__(item_vectors, config, seed)
        self.cross_encoder_config = cross_encoder or CrossEncoderTraining(seed=seed)

    def train(self, lists: CandidateLists, data: TrainData) -> None:
        self.texts = [i.text for i in data.dataset.items]
        self.cascade, self.summary = train_cascade(
            lists, self.vectors, self.texts, self.config, self.cross_encoder_config
        )
        self.model = self.cascade.fusion

    def rescore(self, ranked: list[tuple[int, int, np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        cascade, history_items = self.cascade, self.cascade.cross_encoder.history_items
        tops, histories, items = [], [], []
        for _, row, cols, scores in ranked:
            liked = self.data.histories.get(self.data.users[row], [])
            history = history_text([self.texts[self.data.column[e.item_id]] for e in liked], history_items)
            top = cascade.top(scores)
            tops.append(top)
            histories += [history] * len(top)
            items += [self.texts[c] for c in cols[top]]
        second = cascade.cross_encoder.score_pairs(histories, items, self.cross_encoder_config.batch_pairs)
        bounds = np.cumsum([0] + [len(t) for t in tops])
        return [
            cascade.combine(scores, top, second[a:b])
            for (_, _, _, scores), top, a, b in zip(ranked, tops, bounds[:-1], bounds[1:])
        ]


def train_for_serving(
    dataset,
    vectors: np.ndarray,
    out: str,
    encoder: str,
    config: RerankTraining | None = None,
    seed: int = 0,
    cross_encoder: CrossEncoderTraining | None = None,
) -> dict:
    """The deployable re-ranker: the same recipe as the offline pipeline, on every interaction.
    With `cross_encoder` settings: the fusion -> cross-encoder cascade, in one folder."""
    import dataclasses

    config = config or RerankTraining(seed=seed)
    data = TrainData.build(dataset)
    lists = validation_lists(data, vectors, config, seed)
    fusion_card = {
        "encoder": encoder,
        "ease_l2": config.ease_l2,
        "ease_keep": config.ease_keep,
        "training": dataclasses.asdict(config),
        "data": {"items": len(dataset.items), "interactions": len(dataset.users)},
    }
    if cross_encoder is None:
        model, summary = train_reranker(lists, vectors, config)
        card = {**fusion_card, "summary": summary}
        model.save(out, card)
        return card
    cascade, summary = train_cascade(lists, vectors, [i.text for i in dataset.items], config, cross_encoder)
    fusion_card["summary"] = summary.pop("fusion")
    card = {"encoder": encoder, "data": fusion_card["data"], "summary": summary, "first_stage": fusion_card}
    return cascade.save(out, card)
