"""Training the fusion re-ranker on retrieval candidates.

Lists come from two validation cuts of the training data, so one model serves warm and cold
items alike: a warm cut (each user's latest liked items held out, ranked among every item) and a
cold-item cut (a share of items held out entirely, ranked only by text and predicted popularity).
Loss: listwise softmax cross-entropy over each user's candidates.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from bertrec.rerank.features import RECENT_HISTORY, UserContext, pair_features
from bertrec.rerank.model import FusionReranker
from bertrec.rerank.signals import Interactions, ItemSignals

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RerankTraining:
    text_candidates: int = 100  # nearest items by text
    collaborative_candidates: int = 100  # best EASE scores among items with likes
    popular_candidates: int = 50  # highest prior: observed popularity, or predicted from text for cold items
    neighbour_candidates: int = 50  # items without likes whose text neighbours the collaborative model favours
    ease_l2: float = 100.0
    ease_keep: int = 256
    half_life: float = 20.0
    epochs: int = 40
    lists_per_step: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 10
    members: int = 6  # seeded MLPs averaged; warm NDCG@10 0.1422-0.1440 with 3, 0.1450 with 6
    # Learned projection of user ⊙ item; 0 = scalar signals only. On MovieLens-small it added
    # nothing on warm lists (NDCG@10 0.1443 vs 0.1440 without) and cost cold items a third (it
    # learns which texts the validation users liked): off by default.
    interaction_dims: int = 0
    seed: int = 0


def pooled_vector(history_cols: np.ndarray, vectors: np.ndarray, half_life: float) -> np.ndarray:
    """The service's user vector: the n-th most recent like weighs 0.5 ** (n / half_life)."""
    if len(history_cols) == 0:
        return np.zeros(vectors.shape[1], np.float32)
    ages = np.arange(len(history_cols) - 1, -1, -1, dtype=np.float32)
    pooled = np.power(0.5, ages / half_life) @ vectors[history_cols]
    return (pooled / (np.linalg.norm(pooled) + 1e-12)).astype(np.float32)


def retrieve(
    user: UserContext,
    signals: ItemSignals,
    vectors: np.ndarray,
    allowed: np.ndarray,
    config: RerankTraining,
    collaborative: np.ndarray | None = None,
) -> np.ndarray:
    """First stage: text neighbours plus collaborative neighbours among `allowed` columns."""
    text = vectors[allowed] @ user.vector
    picks = [allowed[top_indices(text, config.text_candidates)]]
    if collaborative is None:
        collaborative = signals.collaborative_scores(user.history_cols)
    known = allowed[signals.counts_of(allowed) > 0]
    if len(known) and len(user.history_cols):
        picks.append(known[top_indices(collaborative[known], config.collaborative_candidates)])
    cold = allowed[signals.counts_of(allowed) == 0]
    if config.neighbour_candidates and len(cold) and len(user.history_cols):
        borrowed = signals.neighbour_scores(collaborative, cold)
        picks.append(cold[top_indices(borrowed, config.neighbour_candidates)])
    if config.popular_candidates:
        # Items text similarity alone would miss: what everyone likes, and cold items whose text
        # predicts they will be liked.
        prior = signals.prior(allowed, vectors[allowed])
        picks.append(allowed[top_indices(prior, config.popular_candidates)])
    return np.unique(np.concatenate(picks))


def top_indices(scores: np.ndarray, n: int) -> np.ndarray:
    if n >= len(scores):
        return np.argsort(-scores)
    part = np.argpartition(-scores, n)[:n]
    return part[np.argsort(-scores[part])]


@dataclass
class CandidateLists:
    """Padded per-user candidate lists: scalars (L, C, S), candidate columns (L, C), user vectors
    (L, D), labels (L, C) and a mask for padding."""

    scalars: np.ndarray
    cols: np.ndarray
    users: np.ndarray
    labels: np.ndarray
    mask: np.ndarray
    kinds: list[str] = field(default_factory=list)
    histories: list[np.ndarray] = field(default_factory=list)  # liked columns, oldest first (cross-encoder text)

    def subset(self, ix: np.ndarray) -> CandidateLists:
        return CandidateLists(
            self.scalars[ix],
            self.cols[ix],
            self.users[ix],
            self.labels[ix],
            self.mask[ix],
            [self.kinds[i] for i in ix] if self.kinds else [],
            [self.histories[i] for i in ix] if self.histories else [],
        )

    @classmethod
    def concat(cls, parts: list[CandidateLists]) -> CandidateLists:
        width = max(p.cols.shape[1] for p in parts)

        def pad(a: np.ndarray, value=0) -> np.ndarray:
            extra = [(0, 0)] * a.ndim
            extra[1] = (0, width - a.shape[1])
            return np.pad(a, extra, constant_values=value)

        return cls(
            np.concatenate([pad(p.scalars) for p in parts]),
            np.concatenate([pad(p.cols) for p in parts]),
            np.concatenate([p.users for p in parts]),
            np.concatenate([pad(p.labels) for p in parts]),
            np.concatenate([pad(p.mask, False) for p in parts]),
            [k for p in parts for k in p.kinds],
            [h for p in parts for h in p.histories],
        )


def build_lists(
    interactions: Interactions,
    held_out: dict[int, set[int]],  # user row -> held-out liked columns
    seen: dict[int, set[int]],  # user row -> columns the user interacted with (never candidates)
    allowed: np.ndarray,
    vectors: np.ndarray,
    config: RerankTraining,
    kind: str,
) -> CandidateLists:
    signals = ItemSignals.fit(interactions, vectors, config.ease_l2, config.ease_keep)
    contexts = user_contexts(interactions, vectors, config.half_life)
    rows = []
    for user, positives in tqdm(sorted(held_out.items()), desc=f"{kind} candidate lists", unit="user", leave=False):
        context = contexts.get(user)
        if context is None:
            continue
        usable = allowed[~np.isin(allowed, list(seen.get(user, ())))]
        cols = retrieve(context, signals, vectors, usable, config)
        labels = np.isin(cols, list(positives))
        if not labels.any():
            continue  # nothing to learn from a list without a positive
        features = pair_features(context, cols, vectors[cols], signals)
        rows.append((features, cols, context.vector, labels, context.history_cols))
    width = max(len(r[1]) for r in rows)
    n = len(rows)
    scalars = np.zeros((n, width, rows[0][0].shape[1]), np.float32)
    cols = np.zeros((n, width), np.int64)
    labels = np.zeros((n, width), np.float32)
    mask = np.zeros((n, width), bool)
    for i, (s, c, _, y, _) in enumerate(rows):
        scalars[i, : len(c)], cols[i, : len(c)], labels[i, : len(c)], mask[i, : len(c)] = s, c, y, True
    users = np.stack([r[2] for r in rows])
    return CandidateLists(scalars, cols, users, labels, mask, [kind] * n, [r[4] for r in rows])


def user_contexts(interactions: Interactions, vectors: np.ndarray, half_life: float) -> dict[int, UserContext]:
    order = np.lexsort((interactions.timestamps, interactions.user_rows))
    rows = interactions.user_rows[order]
    bounds = np.searchsorted(rows, np.arange(interactions.n_users + 1))
    out = {}
    for user in range(interactions.n_users):
        span = order[bounds[user] : bounds[user + 1]]
        if len(span) == 0:
            continue
        now = float(interactions.timestamps[span[-1]])
        out[user] = context_for(interactions.item_cols[span], now, vectors, half_life)
    return out


def context_for(history_cols: np.ndarray, now: float, vectors: np.ndarray, half_life: float) -> UserContext:
    recent = vectors[history_cols[-RECENT_HISTORY:]]
    return UserContext(history_cols, recent, pooled_vector(history_cols, vectors, half_life), now)


def listwise_loss(scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    scores = scores.masked_fill(~mask, -1e9)
    log_p = torch.log_softmax(scores, dim=-1)
    return -((log_p * labels).sum(-1) / labels.sum(-1)).mean()


def ndcg10(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> float:
    scores = np.where(mask, scores, -np.inf)
    top = np.argsort(-scores, axis=1)[:, :10]
    gains = np.take_along_axis(labels, top, axis=1)
    discounts = 1.0 / np.log2(np.arange(2, top.shape[1] + 2))  # lists may be shorter than 10
    ideal = np.array([discounts[: int(min(n, top.shape[1]))].sum() for n in labels.sum(1)])
    return float(((gains * discounts).sum(1) / ideal).mean())


def train_reranker(lists: CandidateLists, vectors: np.ndarray, config: RerankTraining) -> tuple[FusionReranker, dict]:
    """Each member fits on 90% of the lists and stops early on the other 10% (NDCG@10 within the
    candidates); members differ in seed and in which lists they hold out."""
    model = FusionReranker(vectors.shape[1], members=config.members, interaction_dims=config.interaction_dims)
    flat = lists.scalars[lists.mask]
    model.mean.copy_(torch.from_numpy(flat.mean(0)))
    model.std.copy_(torch.from_numpy(flat.std(0) + 1e-6))
    item_vectors = torch.from_numpy(vectors.astype(np.float32))
    tensors = {name: torch.from_numpy(getattr(lists, name)) for name in ("scalars", "cols", "users", "labels", "mask")}
    began = time.perf_counter()
    members = [
        _train_member(model, m, lists, tensors, item_vectors, config, config.seed + m) for m in range(config.members)
    ]
    model.eval()
    summary = {
        "lists": len(lists.cols),
        "kinds": {k: lists.kinds.count(k) for k in sorted(set(lists.kinds))},
        "holdout_ndcg@10": float(np.mean([m["holdout_ndcg@10"] for m in members])),
        "epochs": int(sum(len(m["history"]) for m in members)),
        "train_s": round(time.perf_counter() - began, 1),
        "members": members,
    }
    return model, summary


def _train_member(
    model: FusionReranker,
    member: int,
    lists: CandidateLists,
    t: dict[str, torch.Tensor],
    item_vectors: torch.Tensor,
    config: RerankTraining,
    seed: int,
) -> dict:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    order = rng.permutation(len(lists.cols))
    n_hold = max(1, len(order) // 10)
    hold, fit = order[:n_hold], order[n_hold:].copy()
    params = model.members[member].parameters()
    optimiser = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    def scores_for(ix: np.ndarray) -> torch.Tensor:
        ix = torch.from_numpy(ix)
        return model(t["scalars"][ix], t["users"][ix], item_vectors[t["cols"][ix]], member=member)

    best, best_state, stale, history = -1.0, None, 0, []
    bar = tqdm(range(config.epochs), desc=f"training re-ranker {member + 1}/{config.members}", unit="epoch")
    for epoch in bar:
        model.train()
        losses = []
        rng.shuffle(fit)
        for start in range(0, len(fit), config.lists_per_step):
            ix = fit[start : start + config.lists_per_step]
            loss = listwise_loss(scores_for(ix), t["labels"][ix], t["mask"][ix])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        model.eval()
        with torch.no_grad():
            held = ndcg10(scores_for(hold).numpy(), lists.labels[hold], lists.mask[hold])
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "holdout_ndcg@10": held})
        bar.set_postfix(loss=f"{np.mean(losses):.3f}", holdout=f"{held:.4f}")
        if held > best:
            best, stale = held, 0
            best_state = {k: v.clone() for k, v in model.members[member].state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                break
    model.members[member].load_state_dict(best_state)
    return {"seed": seed, "holdout_ndcg@10": best, "history": history}
