"""Contrastive fine-tuning of a BERT-family encoder with in-batch negatives and logQ correction.

The item tower is the encoder over item text. The user tower (`TrainConfig.user_tower`) is one of:
"items", no user-side training: anchor items against the item liked next (co-liked pairs), for
the service's plain pooling of liked items; "pooled", that pooling over the latest liked items
plus a learned residual layer; "history-text", the same encoder over the latest liked titles.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bertrec.config import ServerConfig
from bertrec.evaluation.data import Dataset
from bertrec.server.users import USER_TOWER_FILE, USER_TOWERS, UserTower
from bertrec.store import HistoryEntry
from bertrec.training.pairs import co_liked_pairs, log_q
from bertrec.training.user_tower import NONE, history_examples, pooling_matrix, residual_layer

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.pt"
CONFIG_FILE = "bertrec_training.json"


@dataclass
class TrainConfig:
    init_from: str = ""  # checkpoint to start from; empty = the packaged MiniLM
    epochs: float = 1.0
    batch_size: int = 64
    lr: float = 3e-5
    warmup_share: float = 0.1
    weight_decay: float = 0.01
    temperature: float = 0.05
    freeze_layers: int = 0  # embeddings + this many lower transformer layers stay fixed
    max_length: int = 32
    window: int = 5
    logq_correction: bool = True
    max_steps: int = 0  # 0 = as many as the epochs give
    hard_negatives: int = 0  # extra negatives per anchor, mined from the anchor's nearest items
    hard_negative_pool: int = 50  # ... drawn from this many nearest neighbours
    hard_negative_refresh: int = 0  # re-mine every this many steps (0 = once, at the start)
    seed: int = 0
    split: str = "warm"
    split_seed: int = 0
    device: str = "auto"
    user_tower: str = "items"  # items | pooled | history-text (see the module docstring)
    history_items: int = 10  # pooled and history-text: the latest liked items a user is made of
    user_max_length: int = 128  # history-text: tokens of the history text
    tower_lr: float = 1e-3  # pooled: learning rate of the residual layer (it starts at zero)


BEST_BY = "ndcg@10"  # the validation figure that picks the kept weights


def _mean_pool(hidden, mask):
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class ContrastiveTrainer:
    def __init__(self, config: TrainConfig, dataset: Dataset, train: Dataset, out_dir: str | Path):
        import torch
        from transformers import AutoModel, AutoTokenizer

        from bertrec.workers.device import resolve_device
        from bertrec.workers.encoder import default_model_path

        if config.user_tower not in USER_TOWERS:
            raise ValueError(f"user_tower must be one of {', '.join(USER_TOWERS)}, got {config.user_tower!r}")
        if config.user_tower != "items" and config.hard_negatives:
            raise ValueError("hard negatives are mined around anchor items: only with user_tower='items'")
        self.torch = torch
        self.config = config
        self.out_dir = Path(out_dir)
        self.device = resolve_device(config.device)
        source = config.init_from or default_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        torch.manual_seed(config.seed)  # dropout and anything else random: a run repeats exactly
        self.model = AutoModel.from_pretrained(source).to(self.device)
        self._freeze(config.freeze_layers)
        pooler = getattr(self.model, "pooler", None)
        if pooler is not None:  # unused (we mean-pool); DDP insists every trainable weight gets a gradient
            for p in pooler.parameters():
                p.requires_grad = False
        self.texts = {i.id: i.text for i in dataset.items}
        # Rows of ids, the target last: (anchor, target) pairs, or (history..., target) examples.
        if config.user_tower == "items":
            self.pairs = co_liked_pairs(train, window=config.window, seed=config.seed)
        else:
            self.pairs = history_examples(train, config.history_items, seed=config.seed)
        if len(self.pairs) < 2:
            raise ValueError(f"{len(self.pairs)} training examples: in-batch negatives need at least 2")
        self.log_q = log_q(self.pairs)
        self.neighbours: dict[int, np.ndarray] = {}
        self.co_liked: dict[int, set[int]] = {}
        if config.user_tower == "items":
            for a, b in self.pairs.tolist():
                self.co_liked.setdefault(a, set()).add(b)
        self.user_layer = None
        if config.user_tower == "pooled":
            self.user_layer = residual_layer(self.model.config.hidden_size).to(self.device)
            saved = Path(source) / USER_TOWER_FILE  # resuming, or starting from a pooled checkpoint
            if saved.exists():
                with torch.no_grad():
                    self.user_layer.weight.copy_(torch.from_numpy(np.load(saved)))
        steps_per_epoch = max(1, len(self.pairs) // config.batch_size)
        total = int(math.ceil(config.epochs * steps_per_epoch))
        self.total_steps = min(total, config.max_steps) if config.max_steps else total
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.user_layer is not None:
            params = [{"params": params}, {"params": list(self.user_layer.parameters()), "lr": config.tower_lr}]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        warmup = max(1, int(config.warmup_share * self.total_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: min((s + 1) / warmup, max(0.0, (self.total_steps - s) / max(1, self.total_steps - warmup))),
        )
        self.step = 0
        self.is_primary = True  # only the primary worker writes checkpoints
        self.losses: list[float] = []
        self.history: list[dict] = []

    def shard(self, rank: int, world_size: int) -> None:
        """Data parallelism: this worker trains on every `world_size`-th pair. Every worker takes
        the same number of steps (DDP synchronises gradients at each one)."""
        per_worker = len(self.pairs) // world_size
        self.pairs = self.pairs[rank::world_size][:per_worker]
        steps = max(1, int(math.ceil(self.config.epochs * max(1, per_worker // self.config.batch_size))))
        self.total_steps = min(steps, self.config.max_steps) if self.config.max_steps else steps
        self.is_primary = rank == 0

    def _freeze(self, layers: int) -> None:
        if layers <= 0:
            return
        if layers >= len(self.model.encoder.layer):
            raise ValueError(f"freeze_layers={layers} would freeze all {len(self.model.encoder.layer)} layers")
        for p in self.model.embeddings.parameters():
            p.requires_grad = False
        for layer in self.model.encoder.layer[:layers]:
            for p in layer.parameters():
                p.requires_grad = False

    def _encode(self, ids: np.ndarray):
        return self.encode_texts([self.texts[int(i)] for i in ids], self.config.max_length)

    def encode_texts(self, texts: list[str], max_length: int):
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return self._embed(batch)

    def _embed(self, batch):
        """Mean-pooled, L2-normalised vectors of a tokenized batch: one forward pass."""
        batch = batch.to(self.device)
        use_amp = self.device.startswith("cuda")
        with self.torch.autocast("cuda", dtype=self.torch.bfloat16, enabled=use_amp):
            hidden = self.model(**batch).last_hidden_state
        return self.torch.nn.functional.normalize(_mean_pool(hidden, batch["attention_mask"]).float(), dim=-1)

    def mine_hard_negatives(self) -> None:
        """Each anchor's nearest items under the current model (brute force over the catalogue
        texts): candidates for negatives that in-batch sampling rarely shows."""
        torch = self.torch
        ids = np.array(sorted(self.texts), dtype=np.int64)
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            vectors = torch.cat([self._encode(ids[i : i + 256]) for i in range(0, len(ids), 256)]).cpu().numpy()
        self.model.train(was_training)
        row = {int(i): n for n, i in enumerate(ids)}
        anchors = np.unique(self.pairs[:, 0])
        sims = vectors[[row[int(a)] for a in anchors]] @ vectors.T
        pool = min(self.config.hard_negative_pool + 1, len(ids) - 1)
        top = np.argpartition(-sims, pool, axis=1)[:, :pool]
        self.neighbours = {int(a): ids[t] for a, t in zip(anchors, top)}

    def _hard_negatives(self, batch_pairs: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(self.config.seed + self.step)
        out = []
        for a, b in batch_pairs.tolist():
            taken = self.co_liked.get(a, set()) | {a, b}
            pool = [i for i in self.neighbours.get(a, ()) if int(i) not in taken]
            if pool:
                out.extend(rng.choice(pool, size=min(self.config.hard_negatives, len(pool)), replace=False))
        return np.array(out, dtype=np.int64)

    def loss(self, batch_pairs: np.ndarray):
        if self.config.user_tower != "items":
            return self._tower_loss(batch_pairs)
        negatives = np.zeros(0, np.int64)
        if self.config.hard_negatives:
            refresh = self.config.hard_negative_refresh
            if not self.neighbours or (refresh and self.step and self.step % refresh == 0):
                self.mine_hard_negatives()
            negatives = self._hard_negatives(batch_pairs)
        # One forward pass for all sides: DDP synchronises one backward per forward.
        n = len(batch_pairs)
        encoded = self._encode(np.concatenate([batch_pairs[:, 0], batch_pairs[:, 1], negatives]))
        anchors, candidates = encoded[:n], encoded[n:]
        return self._in_batch_loss(
            anchors, candidates, batch_pairs[:, 1], np.concatenate([batch_pairs[:, 1], negatives])
        )

    def _in_batch_loss(self, users, candidates, targets: np.ndarray, columns: np.ndarray, excluded=None):
        """Cross-entropy of each row's target (column i of row i) against the other columns."""
        torch = self.torch
        n = len(targets)
        logits = users @ candidates.T / self.config.temperature
        if self.config.logq_correction:
            floor = min(self.log_q.values())  # mined items that are never positives: the rarest share
            correction = torch.tensor([self.log_q.get(int(i), floor) for i in columns], device=logits.device)
            logits = logits - correction[None, :]
        # The same item twice among the columns is not a negative for itself.
        same = targets[:, None] == columns[None, :]
        if excluded is not None:
            same |= excluded
        same = torch.tensor(same, device=logits.device)
        same[torch.arange(n), torch.arange(n)] = False
        logits = logits.masked_fill(same, float("-inf"))
        target = torch.arange(n, device=logits.device)
        return torch.nn.functional.cross_entropy(logits, target)

    def _tower_loss(self, batch: np.ndarray):
        users, items = self.tower_vectors(batch)
        histories, targets = batch[:, :-1], batch[:, -1]
        # Another row's target that this user liked before is no negative for them.
        liked = (histories[:, :, None] == targets[None, None, :]).any(1)
        return self._in_batch_loss(users, items, targets, targets, liked)

    def tower_vectors(self, batch: np.ndarray):
        """(user vectors, target item vectors) of history examples, from one encoder forward pass."""
        torch = self.torch
        histories, targets = batch[:, :-1], batch[:, -1]
        if self.config.user_tower == "history-text":
            tower = self.user_tower()
            texts = [
                tower.text([HistoryEntry(int(i), 0.0, 1.0) for i in h if i != NONE], self.texts) for h in histories
            ]
            users = self.tokenizer(texts, truncation=True, max_length=self.config.user_max_length)
            items = self.tokenizer(
                [self.texts[int(i)] for i in targets], truncation=True, max_length=self.config.max_length
            )
            encoded = self._embed(self.tokenizer.pad({k: users[k] + items[k] for k in users}, return_tensors="pt"))
            return encoded[: len(batch)], encoded[len(batch) :]
        # pooled: each distinct item of the batch encoded once; users pool their history's rows
        ids, matrix = pooling_matrix(histories, ServerConfig.history_half_life)
        distinct, row = np.unique(np.concatenate([ids, targets]), return_inverse=True)
        encoded = self._encode(distinct)
        encoded = encoded[torch.from_numpy(row).to(encoded.device)]  # rows of ids, then of targets
        pooled = torch.from_numpy(matrix).to(encoded.device) @ encoded[: len(ids)]
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        users = torch.nn.functional.normalize(pooled + self.user_layer(pooled), dim=-1)
        return users, encoded[len(ids) :]

    def user_tower(self, encode=None) -> UserTower:
        """The tower as trained so far, in the form evaluation and the service use."""
        c = self.config
        if c.user_tower == "items":
            return UserTower()
        weight = None
        if self.user_layer is not None:
            weight = getattr(self.user_layer, "module", self.user_layer).weight.detach().cpu().numpy().copy()
        return UserTower(c.user_tower, c.history_items, c.user_max_length, weight, encode)

    def batches(self):
        size = min(self.config.batch_size, len(self.pairs))  # fewer examples than a batch: all of them
        epoch = 0
        while True:
            order = np.random.default_rng(self.config.seed + epoch).permutation(len(self.pairs))
            for start in range(0, len(order) - size + 1, size):
                yield self.pairs[order[start : start + size]]
            epoch += 1

    def train(
        self,
        validate: Callable[[], dict] | None = None,
        validate_every: int = 0,
        checkpoint_every: int = 0,
        keep_best: bool = False,
    ) -> dict:
        """Fine-tune to `total_steps`. With `keep_best` (and `validate`), the weights that scored
        best on validation, the starting weights included, are the ones saved: with little data,
        fine-tuning can overfit, and a checkpoint worse than where it started helps nobody."""
        from tqdm import tqdm

        self.model.train()
        batches = self.batches()
        for _ in range(self.step):  # resume: skip what was already seen
            next(batches)
        began = time.perf_counter()
        keep_best = keep_best and validate is not None
        best = self._snapshot(self._validate(validate)) if keep_best else None
        with tqdm(total=self.total_steps, initial=self.step, desc="fine-tuning", unit="step") as bar:
            while self.step < self.total_steps:
                loss = self.loss(next(batches))
                self.optimizer.zero_grad()
                loss.backward()
                self.torch.nn.utils.clip_grad_norm_(self._parameters(), 1.0)
                self.optimizer.step()
                self.scheduler.step()
                self.step += 1
                self.losses.append(loss.item())
                bar.set_postfix(loss=f"{np.mean(self.losses[-50:]):.3f}")
                bar.update(1)
                if validate and validate_every and self.step % validate_every == 0:
                    best = self._better_of(best, self._validate(validate))
                if checkpoint_every and self.step % checkpoint_every == 0:
                    self.save(self.out_dir)
        validated_now = self.history and self.history[-1]["step"] == self.step
        metrics = {} if not validate else self._last_validation() if validated_now else self._validate(validate)
        best_step = self.step
        if best is not None:
            best = self._better_of(best, metrics)
            best_step, metrics = best["step"], best["metrics"]
            self._restore(best)
        window = max(1, min(20, len(self.losses) // 4))  # running mean over the first and last steps
        summary = {
            "steps": self.step,
            "pairs": len(self.pairs),
            "train_s": time.perf_counter() - began,
            "first_loss": float(np.mean(self.losses[:window])) if self.losses else None,
            "last_loss": float(np.mean(self.losses[-window:])) if self.losses else None,
            "validation": metrics,
        }
        if keep_best:
            summary["best_step"] = best_step  # the saved weights are those of this step
        self.save(self.out_dir, summary)
        return summary

    def _last_validation(self) -> dict:
        return {k: v for k, v in self.history[-1].items() if k != "step"}

    def _better_of(self, best: dict | None, metrics: dict) -> dict | None:
        """`best`, or a snapshot of the current weights if `metrics` beat it (None: not keeping)."""
        if best is None or metrics[BEST_BY] <= best["metrics"][BEST_BY]:
            return best
        return self._snapshot(metrics)

    def _snapshot(self, metrics: dict) -> dict:
        """A copy of the trainable weights (encoder and user layer) with their validation figures."""
        modules = {"model": self.model, "user_layer": self.user_layer}
        states = {
            name: {k: v.detach().clone() for k, v in m.state_dict().items()}
            for name, m in modules.items()
            if m is not None
        }
        return {"step": self.step, "metrics": metrics, "states": states}

    def _restore(self, snapshot: dict) -> None:
        for name, state in snapshot["states"].items():
            getattr(self, name).load_state_dict(state)

    def _parameters(self) -> list:
        layer = [] if self.user_layer is None else list(self.user_layer.parameters())
        return list(self.model.parameters()) + layer

    def _validate(self, validate: Callable[[], dict]) -> dict:
        self.model.eval()
        metrics = validate()
        self.model.train()
        self.history.append({"step": self.step, **metrics})
        logger.info("step %d validation %s", self.step, metrics)
        return metrics

    def save(self, out_dir: Path, summary: dict | None = None) -> None:
        """Hugging Face checkpoint + optimizer state for resuming + a model card."""
        if not self.is_primary:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        getattr(self.model, "module", self.model).save_pretrained(out_dir)  # unwrap DDP
        self.tokenizer.save_pretrained(out_dir)
        tower = self.user_tower()
        if tower.weight is not None:
            np.save(out_dir / USER_TOWER_FILE, tower.weight)
        self.torch.save(
            {
                "step": self.step,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "losses": self.losses,
                "history": self.history,
            },
            out_dir / STATE_FILE,
        )
        record = {"config": asdict(self.config), "summary": summary, "history": self.history}
        (out_dir / CONFIG_FILE).write_text(json.dumps(record, indent=2))
        (out_dir / "README.md").write_text(model_card(record))

    def resume(self, checkpoint: Path) -> None:
        state = self.torch.load(Path(checkpoint) / STATE_FILE, weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.losses, self.history = state["step"], state["losses"], state["history"]


def model_card(record: dict) -> str:
    c, s = record["config"], record.get("summary") or {}
    tower = c.get("user_tower", "items")
    started = f"Started from `{c['init_from'] or 'all-MiniLM-L6-v2 (packaged)'}`; "
    logq = " with logQ popularity correction" if c["logq_correction"] else ""
    if tower == "items":
        hard = (
            f", plus {c['hard_negatives']} hard negatives per anchor from its {c['hard_negative_pool']} nearest items"
            if c.get("hard_negatives")
            else ""
        )
        lines = [
            "# bertrec fine-tuned encoder",
            "",
            started + "contrastive item-item training on items",
            f"liked by the same user within {c['window']} interactions, in-batch negatives{logq}{hard}.",
            "",
            "- user tower: `items`, the recency-weighted mean of the vectors of the user's liked items"
            " (no learned layer)",
        ]
    else:
        user = (
            f"the recency-weighted mean of the item vectors of the user's latest {c['history_items']} liked items,"
            f" then a learned residual layer v + Wv (`{USER_TOWER_FILE}`, learning rate {c['tower_lr']})"
            if tower == "pooled"
            else f"the same encoder over the user's latest {c['history_items']} liked titles, most recent first,"
            f" joined with ' ; ' (at most {c['user_max_length']} tokens)"
        )
        lines = [
            "# bertrec fine-tuned two-tower model",
            "",
            started + "contrastive user-item training: a user's history before each liked item is",
            f"trained towards that item, against in-batch negatives{logq}.",
            "",
            "- item tower: the encoder over item text",
            f"- user tower: `{tower}`, {user}",
        ]
    lines += [
        f"- data: the `{c['split']}` split's training interactions (split seed {c['split_seed']})",
        f"- parameters: epochs {c['epochs']}, batch {c['batch_size']}, lr {c['lr']}, temperature {c['temperature']},"
        f" frozen layers {c['freeze_layers']}, max length {c['max_length']}, seed {c['seed']}",
    ]
    if s:
        lines.append(
            f"- steps {s.get('steps')}, {'pairs' if tower == 'items' else 'examples'} {s.get('pairs')},"
            f" loss {s.get('first_loss'):.3f} -> "
            f"{s.get('last_loss'):.3f}, {s.get('train_s', 0):.0f}s"
        )
        if s.get("validation"):
            lines.append(f"- validation: {json.dumps(s['validation'])}")
    for h in record.get("history", []):
        lines.append(f"  - step {h['step']}: {json.dumps({k: v for k, v in h.items() if k != 'step'})}")
    return "\n".join(lines) + "\n"
