"""The cross-encoder re-ranker: BERT over (user-history text, item text) pairs -> a relevance score.

Initialised from the pretrained encoder (transfer learning) with a linear head on the pooled output,
trained with the fusion re-ranker's listwise loss on the same candidate lists, and applied as a
cascade: the fusion model orders every candidate, the cross-encoder re-scores only its top-N (a BERT
pass per pair is too dear for hundreds of candidates), and the two scores are mixed with weights
chosen on held-out lists that neither model trained on.

Saved as a folder: `encoder/` (a Hugging Face checkpoint), `head.pt`, the fusion first stage in
`fusion/`, and `reranker.json` with kind "cross-encoder", the settings and the training metrics.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from bertrec.rerank.model import CARD, FusionReranker
from bertrec.rerank.training import CandidateLists, RerankTraining, listwise_loss, ndcg10, top_indices, train_reranker

logger = logging.getLogger(__name__)

KIND = "cross-encoder"
ENCODER_DIR = "encoder"
HEAD = "head.pt"
FIRST_STAGE_DIR = "fusion"
HISTORY_SEPARATOR = " ; "
POOLINGS = ("mean", "cls")
# (fusion, cross-encoder) weights on per-list z-scores, tried on the held-out lists; ties keep the
# earlier one, so a cross-encoder that adds nothing leaves the fusion order alone.
MIXES = ((1.0, 0.0), (1.0, 0.25), (1.0, 0.5), (1.0, 1.0), (1.0, 2.0), (1.0, 4.0), (0.0, 1.0))
SCORE_CHUNK_LISTS = 256  # fusion scores for this many lists at a time (lists x candidates x dim floats)


@dataclass(frozen=True)
class CrossEncoderTraining:
    init_from: str = ""  # Hugging Face checkpoint to start from; "" = the packaged MiniLM
    steps: int = 200
    lists_per_step: int = 4
    negatives: int = 15  # sampled per list and step, from the first stage's top-N, besides the positives
    max_positives: int = 4
    freeze_layers: int = 4  # embeddings + this many lower transformer layers stay fixed (cheap on CPU)
    max_length: int = 128  # tokens per pair; the history is cut first (its oldest titles)
    history_items: int = 10  # latest liked titles in the history text, most recent first
    pooling: str = "mean"  # "mean" (how MiniLM was pretrained) or "cls"
    lr: float = 3e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_share: float = 0.1
    top_n: int = 50  # the cascade re-scores the first stage's top-N
    mix_lists: int = 64  # held-out lists (out of both models' training) that choose the score mix
    batch_pairs: int = 64  # pairs per forward pass when scoring
    device: str = "auto"
    seed: int = 0


def history_text(titles_oldest_first: Sequence[str], n: int) -> str:
    """The user side of a pair: the latest `n` liked titles, most recent first."""
    return HISTORY_SEPARATOR.join(list(titles_oldest_first)[-n:][::-1]) if n > 0 else ""


def pair_ids(history: list[int], item: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """The two sides of [CLS] history [SEP] item [SEP], cut to fit `max_length` tokens: the item
    keeps at least half the budget; the history loses its tail (the oldest titles) first."""
    budget = max_length - 3
    item = item[: max(budget // 2, budget - len(history))]
    return history[: budget - len(item)], item


class CrossEncoder(nn.Module):
    """A BERT-family encoder with a linear head over the pooled pair representation."""

    def __init__(self, encoder, tokenizer, max_length: int = 128, pooling: str = "mean", history_items: int = 10):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
            raise ValueError("the cross-encoder needs a BERT-style tokenizer ([CLS] and [SEP] tokens)")
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.head = nn.Linear(int(encoder.config.hidden_size), 1)
        self.settings = {"max_length": max_length, "pooling": pooling, "history_items": history_items}
        self.max_length = max_length
        self.pooling = pooling
        self.history_items = history_items
        self.token_types = "token_type_ids" in tokenizer.model_input_names
        self._ids: dict[str, list[int]] = {}
        self._lock = threading.Lock()  # scoring from several request threads: one forward at a time

    @classmethod
    def from_pretrained(cls, path: str = "", **settings) -> CrossEncoder:
        from transformers import AutoModel, AutoTokenizer

        from bertrec.workers.encoder import default_model_path

        path = path or default_model_path()
        return cls(AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path), **settings)

    def freeze(self, layers: int) -> None:
        """Embeddings and the lower `layers` transformer layers stay as pretrained."""
        if layers <= 0:
            return
        blocks = self.encoder.encoder.layer
        if layers >= len(blocks):
            raise ValueError(f"freeze_layers={layers} would freeze all {len(blocks)} layers")
        for p in self.encoder.embeddings.parameters():
            p.requires_grad = False
        for block in blocks[:layers]:
            for p in block.parameters():
                p.requires_grad = False

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids without special tokens, cached per text (item titles recur across users and steps)."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._ids]
        if missing:
            if len(self._ids) > 200_000:
                self._ids.clear()
            cap = self.max_length  # no side of a pair ever keeps more
            for text, ids in zip(missing, self.tokenizer(missing, add_special_tokens=False)["input_ids"]):
                self._ids[text] = list(ids[:cap])
        return [self._ids[t] for t in texts]

    def encode_pairs(self, histories: Sequence[str], items: Sequence[str]) -> dict[str, torch.Tensor]:
        """Padded model inputs for (history text, item text) pairs."""
        cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        pad_id = self.tokenizer.pad_token_id or 0
        rows = []
        for h, i in zip(self.token_ids(histories), self.token_ids(items)):
            history, item = pair_ids(h, i, self.max_length)
            rows.append(([cls_id, *history, sep_id, *item, sep_id], len(history) + 2))
        width = max(len(r[0]) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        types = torch.zeros((len(rows), width), dtype=torch.long)
        for n, (row, item_start) in enumerate(rows):
            ids[n, : len(row)] = torch.tensor(row)
            mask[n, : len(row)] = 1
            types[n, item_start : len(row)] = 1
        batch = {"input_ids": ids, "attention_mask": mask}
        if self.token_types:
            batch["token_type_ids"] = types
        return batch

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.head(pooled).squeeze(-1)

    def scores_for(self, histories: Sequence[str], items: Sequence[str]) -> torch.Tensor:
        """Scores with gradients (training)."""
        device = self.head.weight.device
        return self(**{k: v.to(device) for k, v in self.encode_pairs(histories, items).items()})

    @torch.no_grad()
    def score_pairs(self, histories: Sequence[str], items: Sequence[str], batch_pairs: int = 64) -> np.ndarray:
        """Scores of many pairs, batched by token length so little of each forward pass is padding."""
        out = np.zeros(len(items), np.float32)
        if not len(items):
            return out
        with self._lock:  # the token cache and the tokenizer are shared too, not only the weights
            lengths = [len(h) + len(i) for h, i in zip(self.token_ids(histories), self.token_ids(items))]
            order = np.argsort(lengths, kind="stable")
            self.eval()
            for start in range(0, len(order), batch_pairs):
                ix = order[start : start + batch_pairs]
                scores = self.scores_for([histories[i] for i in ix], [items[i] for i in ix])
                out[ix] = scores.float().cpu().numpy()
        return out

    def score(self, history: str, items: Sequence[str], batch_pairs: int = 64) -> np.ndarray:
        return self.score_pairs([history] * len(items), items, batch_pairs)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        self.encoder.save_pretrained(path / ENCODER_DIR)
        self.tokenizer.save_pretrained(path / ENCODER_DIR)
        torch.save(self.head.state_dict(), path / HEAD)

    @classmethod
    def load(cls, path: str | Path, settings: dict, device: str = "cpu") -> CrossEncoder:
        path = Path(path)
        model = cls.from_pretrained(str(path / ENCODER_DIR), **settings)
        model.head.load_state_dict(torch.load(path / HEAD, weights_only=True))
        return model.to(device).eval()


@dataclass
class CascadeReranker:
    """The fusion model orders every candidate; the cross-encoder re-scores its top `top_n`, mixed
    with the fusion score as `weights` = (fusion, cross-encoder) on per-list z-scores."""

    fusion: FusionReranker
    cross_encoder: CrossEncoder
    top_n: int
    weights: tuple[float, float]

    def top(self, first: np.ndarray, top_n: int | None = None) -> np.ndarray:
        """Positions of the first stage's top-N, best first."""
        return top_indices(first, top_n or self.top_n)

    def combine(self, first: np.ndarray, top: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Final scores: the top-N by the mix, all of them above the rest, which keep the first
        stage's order (scores are on no common scale across requests, only the order counts)."""
        out = first.astype(np.float32).copy()
        if len(top) == 0:
            return out
        mixed = mix_scores(first[top], second, self.weights)
        rest = np.delete(first, top)
        floor = float(rest.max()) + 1.0 if len(rest) else 0.0
        out[top] = floor + mixed - mixed.min()
        return out

    def save(self, path: str | Path, card: dict) -> dict:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        first_card = card.get("first_stage", {})
        self.fusion.save(path / FIRST_STAGE_DIR, first_card)
        self.cross_encoder.save(path)
        card = {
            **{k: v for k, v in card.items() if k != "first_stage"},
            "kind": KIND,
            "settings": self.cross_encoder.settings,
            "top_n": self.top_n,
            "weights": list(self.weights),
            "first_stage": FIRST_STAGE_DIR,
        }
        (path / CARD).write_text(json.dumps(card, indent=2))
        return card

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> tuple[CascadeReranker, dict]:
        path = Path(path)
        card = json.loads((path / CARD).read_text())
        if card.get("kind") != KIND:
            raise ValueError(f"{path} holds a {card.get('kind', 'fusion')} re-ranker, not a {KIND}")
        fusion, _ = FusionReranker.load(path / card["first_stage"])
        model = CrossEncoder.load(path, card["settings"], device)
        return cls(fusion, model, int(card["top_n"]), tuple(card["weights"])), card


def _z(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-6)


def mix_scores(first: np.ndarray, second: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    return (weights[0] * _z(first.astype(np.float32)) + weights[1] * _z(second.astype(np.float32))).astype(np.float32)


def first_stage_scores(fusion: FusionReranker, lists: CandidateLists, vectors: np.ndarray) -> np.ndarray:
    """The fusion model's scores of every list's candidates, -inf on padding."""
    out = np.empty(lists.cols.shape, np.float32)
    for start in range(0, len(lists.cols), SCORE_CHUNK_LISTS):
        ix = slice(start, start + SCORE_CHUNK_LISTS)
        out[ix] = fusion.score(lists.scalars[ix], lists.users[ix], vectors[lists.cols[ix]])
    return np.where(lists.mask, out, -np.inf)


def train_cross_encoder(
    model: CrossEncoder,
    lists: CandidateLists,
    texts: Sequence[str],
    config: CrossEncoderTraining,
    first: np.ndarray | None = None,
) -> dict:
    """Listwise softmax over sampled sub-lists: each step takes `lists_per_step` lists, their
    positives and `negatives` negatives drawn from the first stage's top-N (the candidates the
    cascade will re-score), or from the whole list without `first`. Returns the loss history."""
    from bertrec.workers.device import resolve_device

    device = resolve_device(config.device)
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    model.to(device)
    model.freeze(config.freeze_layers)
    usable = np.array([i for i, h in enumerate(lists.histories) if len(h) and lists.labels[i].any()])
    if len(usable) == 0:
        raise ValueError("no candidate list has both a history and a positive")
    head = list(model.head.parameters())
    body = [p for p in model.encoder.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(
        [{"params": body, "lr": config.lr}, {"params": head, "lr": config.head_lr}], weight_decay=config.weight_decay
    )
    warmup = max(1, int(config.warmup_share * config.steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min((s + 1) / warmup, max(0.0, (config.steps - s) / max(1, config.steps - warmup)))
    )
    began = time.perf_counter()
    losses: list[float] = []
    bar = tqdm(range(config.steps), desc="training cross-encoder", unit="step")
    for _ in bar:
        ix = rng.choice(usable, min(config.lists_per_step, len(usable)), replace=False)
        batch = [sample_list(lists, int(i), texts, config, rng, first) for i in ix]
        model.train()
        loss = batch_loss(model, batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(float(loss.item()))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    model.eval()
    window = max(1, min(20, len(losses) // 4))
    return {
        "steps": config.steps,
        "lists": len(usable),
        "loss_first": float(np.mean(losses[:window])),
        "loss_last": float(np.mean(losses[-window:])),
        "losses": [round(x, 4) for x in losses],
        "train_s": round(time.perf_counter() - began, 1),
        "device": device,
    }


def batch_loss(model: CrossEncoder, batch: list[tuple[str, list[str], np.ndarray]]) -> torch.Tensor:
    """Listwise softmax loss of sampled sub-lists (history text, candidate texts, labels)."""
    width = max(len(y) for _, _, y in batch)
    labels = torch.zeros((len(batch), width))
    mask = torch.zeros((len(batch), width), dtype=torch.bool)
    for n, (_, _, y) in enumerate(batch):
        labels[n, : len(y)] = torch.from_numpy(y)
        mask[n, : len(y)] = True
    histories = [h for h, items, _ in batch for _ in items]
    flat = model.scores_for(histories, [t for _, items, _ in batch for t in items])
    scores = torch.zeros((len(batch), width), device=flat.device)
    scores[mask.to(flat.device)] = flat
    return listwise_loss(scores, labels.to(flat.device), mask.to(flat.device))


def sample_list(
    lists: CandidateLists,
    i: int,
    texts: Sequence[str],
    config: CrossEncoderTraining,
    rng: np.random.Generator,
    first: np.ndarray | None = None,
) -> tuple[str, list[str], np.ndarray]:
    """(history text, candidate texts, labels) of one sampled sub-list of list `i`."""
    valid = np.flatnonzero(lists.mask[i])
    positive = valid[lists.labels[i, valid] > 0]
    if len(positive) > config.max_positives:
        positive = rng.choice(positive, config.max_positives, replace=False)
    pool = valid if first is None else valid[top_indices(first[i, valid], config.top_n)]
    pool = pool[lists.labels[i, pool] == 0]
    negative = rng.choice(pool, min(config.negatives, len(pool)), replace=False) if len(pool) else pool
    picks = np.concatenate([positive, negative]).astype(np.int64)
    history = history_text([texts[c] for c in lists.histories[i]], config.history_items)
    return history, [texts[c] for c in lists.cols[i, picks]], lists.labels[i, picks].astype(np.float32)


def choose_mix(
    model: CrossEncoder, lists: CandidateLists, texts: Sequence[str], first: np.ndarray, config: CrossEncoderTraining
) -> tuple[tuple[float, float], dict]:
    """The (fusion, cross-encoder) weights with the best NDCG@10 within the first stage's top-N of
    held-out lists; also the NDCG@10 of every mix tried (the first is the fusion order alone)."""
    rows, firsts, histories, items = [], [], [], []
    for i in range(len(lists.cols)):
        if not len(lists.histories[i]):
            continue
        valid = np.flatnonzero(lists.mask[i])
        top = valid[top_indices(first[i, valid], config.top_n)]
        if not lists.labels[i, top].any():
            continue  # no order of these candidates scores anything
        rows.append(lists.labels[i, top])
        firsts.append(first[i, top])
        history = history_text([texts[c] for c in lists.histories[i]], config.history_items)
        histories += [history] * len(top)
        items += [texts[c] for c in lists.cols[i, top]]
    if not rows:
        return MIXES[0], {"lists": 0}
    second = model.score_pairs(histories, items, config.batch_pairs)
    bounds = np.cumsum([0] + [len(r) for r in rows])
    seconds = [second[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    width = max(len(r) for r in rows)
    labels = np.zeros((len(rows), width), np.float32)
    mask = np.zeros((len(rows), width), bool)
    for n, r in enumerate(rows):
        labels[n, : len(r)], mask[n, : len(r)] = r, True
    results = {}
    for weights in MIXES:
        scores = np.zeros((len(rows), width), np.float32)
        for n, (f, s) in enumerate(zip(firsts, seconds)):
            scores[n, : len(f)] = mix_scores(f, s, weights)
        results[weights] = ndcg10(scores, labels, mask)
    best = max(MIXES, key=lambda w: results[w])  # max keeps the first of equals
    table = {f"fusion {w[0]:g} + cross-encoder {w[1]:g}": round(v, 4) for w, v in results.items()}
    return best, {"lists": len(rows), "ndcg@10_in_top_n": table}


def train_cascade(
    lists: CandidateLists,
    vectors: np.ndarray,
    texts: Sequence[str],
    fusion_config: RerankTraining,
    config: CrossEncoderTraining,
) -> tuple[CascadeReranker, dict]:
    """Fusion model and cross-encoder on the same lists, less `mix_lists` held out of both to
    choose the mix. `texts`: item text per catalogue column."""
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(len(lists.cols))
    n_mix = min(config.mix_lists, len(order) // 10)
    mix_ix, fit_ix = np.sort(order[:n_mix]), np.sort(order[n_mix:])
    fit, held = lists.subset(fit_ix), lists.subset(mix_ix)
    fusion, fusion_summary = train_reranker(fit, vectors, fusion_config)
    torch.manual_seed(config.seed)  # the head's initial weights: a run repeats exactly
    model = CrossEncoder.from_pretrained(
        config.init_from, max_length=config.max_length, pooling=config.pooling, history_items=config.history_items
    )
    ce_summary = train_cross_encoder(model, fit, texts, config, first_stage_scores(fusion, fit, vectors))
    if n_mix:
        weights, mix_summary = choose_mix(model, held, texts, first_stage_scores(fusion, held, vectors), config)
    else:
        weights, mix_summary = MIXES[0], {"lists": 0}
    logger.info(
        "cross-encoder: loss %.3f -> %.3f over %d steps; mix %s chosen on %d held-out lists %s",
        ce_summary["loss_first"],
        ce_summary["loss_last"],
        config.steps,
        weights,
        mix_summary["lists"],
        mix_summary.get("ndcg@10_in_top_n", {}),
    )
    summary = {
        "fusion": fusion_summary,
        "cross_encoder": {k: v for k, v in ce_summary.items() if k != "losses"},
        "losses": ce_summary["losses"],
        "mix": mix_summary,
        "training": asdict(config),
    }
    return CascadeReranker(fusion, model, config.top_n, weights), summary
