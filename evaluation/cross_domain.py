"""Cross-domain transfer: does fine-tuning on a source domain help a target domain with little data?

MovieLens is split by genre into two domains that share no items: the target holds every movie
with one of the target genres, the source every other movie. The encoder is fine-tuned once on
the source domain's interactions; on the target domain's warm split, with 5%, 20% and 100% of
its training interactions, four encoders are compared with the same text recipe (pooled liked
items, cosine): the pretrained one, the source-tuned one as is, and each of those fine-tuned on
the target data. Popularity and EASE on the same target data are the classical reference.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertrec.evaluation import methods as m
from bertrec.evaluation.data import Dataset
from bertrec.evaluation.runner import PRIMARY, run_method, tune
from bertrec.evaluation.splits import Split, warm_split

logger = logging.getLogger(__name__)

TARGET_GENRES = ("Animation", "Children", "Fantasy")


@dataclass(frozen=True)
class CrossDomainConfig:
    target_genres: tuple[str, ...] = TARGET_GENRES
    fractions: tuple[float, ...] = (0.05, 0.2, 1.0)
    source_steps: int = 300
    target_steps: int = 100
    target_max_epochs: float = 10.0  # small target data: at most this many passes
    batch_size: int = 64
    seed: int = 0


def genre_domains(dataset: Dataset, target_genres: tuple[str, ...]) -> tuple[Dataset, Dataset]:
    """(source, target): items split by genre, each interaction following its item."""
    wanted = set(target_genres)
    target_ids = {i.id for i in dataset.items if wanted & set(i.metadata.get("genres", []))}

    def part(keep_target: bool) -> Dataset:
        items = [i for i in dataset.items if (i.id in target_ids) == keep_target]
        mask = np.isin(dataset.item_ids, list(target_ids)) == keep_target
        sub = dataset.subset(mask)
        return Dataset(items, sub.users, sub.item_ids, sub.timestamps, sub.weights, sub.positive_threshold)

    return part(False), part(True)


def subsample(split: Split, fraction: float, seed: int) -> Split:
    """Keep `fraction` of the training interactions; test users need some history left."""
    if fraction >= 1.0:
        return split
    keep = np.random.default_rng(seed).random(len(split.train.users)) < fraction
    train = split.train.subset(keep)
    has_history = set(train.users[train.positive].tolist())
    test = {u: items for u, items in split.test.items() if u in has_history}
    return Split(split.name, train, test, split.candidate_ids, split.seed)


def _fine_tune(init_from: str, dataset: Dataset, train: Dataset, out: Path, steps: int, epochs: float, cfg) -> str:
    from bertrec.training.trainer import ContrastiveTrainer, TrainConfig

    config = TrainConfig(
        init_from=init_from, epochs=epochs, max_steps=steps, batch_size=cfg.batch_size, seed=cfg.seed, split="warm"
    )
    summary = ContrastiveTrainer(config, dataset, train, out).train()
    logger.info("fine-tuned %s: %d steps on %d pairs", out.name, summary["steps"], summary["pairs"])
    return str(out)


def _vectors(dataset: Dataset, model: str, cache: Path) -> np.ndarray:
    from bertrec.evaluation.experiment import encode_catalogue

    return encode_catalogue(dataset, model, cache)


def run_cross_domain(dataset: Dataset, out_dir: Path, config: CrossDomainConfig | None = None) -> dict:
    config = config or CrossDomainConfig()
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "checkpoints"
    cache = out_dir / "cache"
    source, target = genre_domains(dataset, config.target_genres)
    logger.info(
        "source: %d items, %d interactions; target (%s): %d items, %d interactions",
        len(source.items),
        len(source.users),
        "/".join(config.target_genres),
        len(target.items),
        len(target.users),
    )
    source_model = str(work / "source")
    if not (work / "source" / "config.json").exists():
        _fine_tune("", source, source, work / "source", config.source_steps, 1.0, config)
    full = warm_split(target)
    rows: dict[str, dict[str, float]] = {}
    users: dict[str, int] = {}
    for fraction in config.fractions:
        split = subsample(full, fraction, config.seed)
        label = f"{fraction:.0%}"
        users[label] = len(split.test)
        encoders = {"pretrained (zero-shot)": "", "source-tuned, no target tuning": source_model}
        for name, init in (("pretrained -> target-tuned", ""), ("source-tuned -> target-tuned", source_model)):
            folder = work / f"{'source' if init else 'pretrained'}-target-{label.rstrip('%')}"
            if not (folder / "config.json").exists():
                _fine_tune(init, target, split.train, folder, config.target_steps, config.target_max_epochs, config)
            encoders[name] = str(folder)
        for name, model in encoders.items():
            result = run_method(m.ZeroShot(_vectors(target, model, cache)), split)
            rows.setdefault(name, {})[label] = result.mean(PRIMARY)
        rows.setdefault("popularity", {})[label] = run_method(m.Popularity(), split).mean(PRIMARY)
        ease_params = tune(lambda **p: m.EASE(**p), m.EASE.grid, split)
        rows.setdefault("EASE", {})[label] = run_method(m.EASE(**ease_params), split).mean(PRIMARY)
        logger.info("target data %s: %s", label, {k: round(v[label], 4) for k, v in rows.items()})
    report = {"config": {**config.__dict__}, "test_users": users, PRIMARY: rows}
    (out_dir / "cross_domain.json").write_text(json.dumps(report, indent=2))
    (out_dir / "cross_domain.md").write_text(_markdown(rows, users))
    _plot(rows, out_dir / "cross_domain.png")
    return report


def _markdown(rows: dict[str, dict[str, float]], users: dict[str, int]) -> str:
    labels = list(users)
    lines = [
        "| method | " + " | ".join(f"{lab} of target data ({users[lab]} users)" for lab in labels) + " |",
        "|---|" + "---:|" * len(labels),
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[lab]:.4f}" for lab in labels) + " |")
    return "Target-domain NDCG@10 (warm split of the target domain)\n\n" + "\n".join(lines) + "\n"


def _plot(rows: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, row in rows.items():
        labels = list(row)
        ax.plot(labels, [row[lab] for lab in labels], marker="o", label=name)
    ax.set_xlabel("share of the target domain's training interactions")
    ax.set_ylabel("NDCG@10 (target domain)")
    ax.set_title("Cross-domain transfer: source fine-tuning vs pretrained")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
