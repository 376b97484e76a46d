"""Validation during training: the service's recipe (the user tower being trained, cosine to every
item) with the model being trained."""

from __future__ import annotations

import numpy as np

from bertrec.evaluation.data import Dataset
from bertrec.evaluation.methods import TrainData, ZeroShot
from bertrec.evaluation.runner import run_method
from bertrec.evaluation.splits import Split


def _inference(trainer, encode, rows, batch: int) -> np.ndarray:
    """`encode` over `rows` (item ids or texts) in chunks of `batch`, without dropout or gradients."""
    was_training = trainer.model.training
    trainer.model.eval()  # the vectors the service would compute
    try:
        with trainer.torch.inference_mode():
            return np.concatenate([encode(rows[s : s + batch]).cpu().numpy() for s in range(0, len(rows), batch)])
    finally:
        trainer.model.train(was_training)


def encode_with(trainer, dataset: Dataset, batch: int = 256) -> np.ndarray:
    ids = np.array([i.id for i in dataset.items], dtype=np.int64)
    return _inference(trainer, trainer._encode, ids, batch)


def encode_texts_with(trainer, texts: list[str], batch: int = 64) -> np.ndarray:
    """User-side texts (the history-text tower) at the user side's token cap."""
    return _inference(trainer, lambda t: trainer.encode_texts(t, trainer.config.user_max_length), texts, batch)


def make_validator(trainer, dataset: Dataset, split: Split):
    data = TrainData.build(split.train)

    def validate() -> dict:
        vectors = encode_with(trainer, dataset)
        tower = trainer.user_tower(encode=lambda texts: encode_texts_with(trainer, texts))
        result = run_method(ZeroShot(vectors, tower=tower), split, data)
        return {"ndcg@10": round(result.mean("ndcg@10"), 5), "recall@20": round(result.mean("recall@20"), 5)}

    return validate
