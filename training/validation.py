"""Validation during training: the service's recipe (pooled liked items) with the model being trained."""

from __future__ import annotations

import numpy as np

from bertrec.evaluation.data import Dataset
from bertrec.evaluation.methods import TrainData, ZeroShot
from bertrec.evaluation.runner import run_method
from bertrec.evaluation.splits import Split


def encode_with(trainer, dataset: Dataset, batch: int = 256) -> np.ndarray:
    torch = trainer.torch
    ids = np.array([i.id for i in dataset.items], dtype=np.int64)
    out = []
    was_training = trainer.model.training
    trainer.model.eval()  # no dropout: the vectors the service would compute
    try:
        with torch.inference_mode():
            for start in range(0, len(ids), batch):
                out.append(trainer._encode(ids[start : start + batch]).cpu().numpy())
    finally:
        trainer.model.train(was_training)
    return np.concatenate(out)


def make_validator(trainer, dataset: Dataset, split: Split):
    data = TrainData.build(split.train)

    def validate() -> dict:
        vectors = encode_with(trainer, dataset)
        result = run_method(ZeroShot(vectors), split, data)
        return {"ndcg@10": round(result.mean("ndcg@10"), 5), "recall@20": round(result.mean("recall@20"), 5)}

    return validate
