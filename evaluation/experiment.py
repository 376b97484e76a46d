"""`bertrec evaluate`: every method on the same deterministic splits, tuned on validation, seeds averaged."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bertrec.evaluation import methods as m
from bertrec.evaluation.data import Dataset
from bertrec.evaluation.pipeline import CASCADE, PIPELINE, CrossEncoderPipeline, RerankPipeline
from bertrec.evaluation.report import summarise, write
from bertrec.evaluation.runner import run_method, tune
from bertrec.evaluation.splits import SPLITS
from bertrec.server.users import UserTower

logger = logging.getLogger(__name__)

ALL_METHODS = (
    "random",
    "popularity",
    "itemknn",
    "ease",
    "als",
    "genre-profile",
    "zero-shot",
    "zero-shot + popularity",
    PIPELINE,
)
# Run only when named: a BERT pass per (user, candidate) pair is slow on CPU.
OPTIONAL_METHODS = (CASCADE,)
# Methods that use no interaction signal for the items they rank: the cold split's text baselines.
REFERENCE = "zero-shot"


def encode_catalogue(dataset: Dataset, model_path: str, cache_dir: Path) -> np.ndarray:
    """Item vectors with the (pretrained or fine-tuned) encoder, cached by model and texts."""
    from bertrec.fingerprint import model_fingerprint
    from bertrec.workers.encoder import BertEncoder, default_model_path

    path = model_path or default_model_path()
    texts = [i.text for i in dataset.items]
    digest = hashlib.blake2b("\n".join(texts).encode(), digest_size=8).hexdigest()
    cache = cache_dir / f"vectors-{model_fingerprint(path)}-{digest}.npy"
    if cache.exists():
        return np.load(cache)
    from tqdm import tqdm

    encoder = BertEncoder(path, "cpu")
    chunks = []
    for start in tqdm(range(0, len(texts), 512), desc="encoding items", unit="x512"):
        chunks.append(encoder.encode_items(texts[start : start + 512]))
    vectors = np.concatenate(chunks)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(cache, vectors)
    return vectors


def user_tower(model_path: str) -> UserTower:
    """The user tower a fine-tuned checkpoint was trained with; the history-text one encodes with
    the checkpoint, each distinct history once (tuning scores the same users again)."""
    tower = UserTower.load(model_path)
    if tower.kind != "history-text":
        return tower
    from bertrec.workers.encoder import BertEncoder

    encoder = BertEncoder(model_path, "cpu", max_length=tower.max_length)
    known: dict[str, np.ndarray] = {}

    def encode(texts: list[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in known]
        if new:
            known.update(zip(new, encoder.encode_users(new)))
        return np.stack([known[t] for t in texts])

    return replace(tower, encode=encode)


def checkpoint_split(model_path: str) -> tuple[str, int] | None:
    """The split (and seed) whose training data a fine-tuned checkpoint saw, if it records one."""
    record = Path(model_path) / "bertrec_training.json"
    if not model_path or not record.exists():
        return None
    config = json.loads(record.read_text())["config"]
    return config["split"], config["split_seed"]


TEXT_METHODS = ("zero-shot", "zero-shot + popularity", PIPELINE, CASCADE)


def _renamed(factory, label: str):
    """Report text methods run with a fine-tuned encoder under their own name."""

    def build(**params):
        method = factory(**params)
        method.name = label
        return method

    return build


def make_factory(name: str, vectors: np.ndarray | None, seed: int, tower: UserTower | None = None):
    if name == "random":
        return lambda **p: m.Random(seed=seed)
    if name == "popularity":
        return lambda **p: m.Popularity()
    if name == "itemknn":
        return lambda **p: m.ItemKNN(**p)
    if name == "ease":
        return lambda **p: m.EASE(**p)
    if name == "als":
        return lambda **p: m.ALS(**p)
    if name == "genre-profile":
        return lambda **p: m.GenreProfile()
    if name == "zero-shot":
        return lambda **p: m.ZeroShot(vectors, tower=tower)
    if name == "zero-shot + popularity":
        return lambda **p: m.TextPlusPopularity(vectors, tower=tower, **p)
    if name == PIPELINE:
        return lambda **p: RerankPipeline(vectors, seed=seed)
    if name == CASCADE:
        return lambda **p: CrossEncoderPipeline(vectors, seed=seed)
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(ALL_METHODS + OPTIONAL_METHODS)}")


GRIDS = {
    "itemknn": m.ItemKNN.grid,
    "ease": m.EASE.grid,
    "als": m.ALS.grid,
    "zero-shot + popularity": m.TextPlusPopularity.grid,
}


def run_evaluation(
    dataset: Dataset,
    split_names: list[str],
    method_names: list[str],
    seeds: int | list[int],
    out_dir: Path,
    model_path: str = "",
) -> dict:
    """`seeds`: how many random draws (0..n-1) of the cold and low-resource splits, or which ones."""
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    needs_text = any(n in TEXT_METHODS for n in method_names)
    vectors = encode_catalogue(dataset, model_path, out_dir / "cache") if needs_text else None
    tower = user_tower(model_path) if needs_text else None
    results = []
    params_used: dict = {}
    for split_name in split_names:
        split_seeds = seed_list if split_name != "warm" else seed_list[:1]  # warm has no randomness
        tuned: dict[str, dict] = {}
        for seed in split_seeds:
            split = SPLITS[split_name](dataset, seed=seed)
            logger.info(
                "%s split, seed %d: %d test users, %d candidates",
                split_name,
                seed,
                len(split.test),
                len(split.candidate_ids),
            )
            for name in method_names:
                factory = make_factory(name, vectors, seed, tower)
                if model_path and name in TEXT_METHODS:
                    label = f"{name} (fine-tuned encoder)" if name in (PIPELINE, CASCADE) else name
                    factory = _renamed(factory, label.replace("zero-shot", "fine-tuned"))
                if name not in tuned:  # tuned once per split kind, on the first seed's validation data
                    tuned[name] = tune(factory, GRIDS.get(name, [{}]), split)
                began = time.perf_counter()
                result = run_method(factory(**tuned[name]), split)
                result.params = tuned[name]
                results.append(result)
                logger.info(
                    "  %-24s ndcg@10 %.4f  recall@20 %.4f  (%.1fs)",
                    name,
                    result.mean("ndcg@10"),
                    result.mean("recall@20"),
                    time.perf_counter() - began,
                )
        params_used[split_name] = tuned
    reference = (
        (REFERENCE.replace("zero-shot", "fine-tuned") if model_path else REFERENCE)
        if REFERENCE in method_names
        else None
    )
    summary = summarise(results, reference=reference)
    meta = {
        "splits": split_names,
        "methods": method_names,
        "seeds": seed_list,
        "params": params_used,
        "model": model_path or "all-MiniLM-L6-v2 (packaged)",
        **({"user_tower": tower.kind} if model_path and tower else {}),
        "items": len(dataset.items),
        "interactions": len(dataset.users),
    }
    paths = write(summary, out_dir, reference, meta)
    logger.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return summary
