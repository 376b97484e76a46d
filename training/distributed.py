"""Data-parallel fine-tuning on a Ray cluster through Ray Train (TorchTrainer, DDP)."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from bertrec.evaluation.data import Dataset
from bertrec.training.trainer import TrainConfig

logger = logging.getLogger(__name__)


def _worker_loop(loop_config: dict) -> dict:
    import ray.train
    import ray.train.torch

    from bertrec.training.trainer import ContrastiveTrainer

    config = TrainConfig(**loop_config["config"])
    context = ray.train.get_context()
    device = str(ray.train.torch.get_device())
    config.device = "cuda" if device.startswith("cuda") else "cpu"
    trainer = ContrastiveTrainer(config, loop_config["dataset"], loop_config["train"], loop_config["out_dir"])
    trainer.shard(context.get_world_rank(), context.get_world_size())
    trainer.model = ray.train.torch.prepare_model(trainer.model)  # DDP on the worker's device
    if trainer.user_layer is not None:  # its own DDP: one forward and one backward a step, as the encoder's
        trainer.user_layer = ray.train.torch.prepare_model(trainer.user_layer)
    summary = trainer.train()
    ray.train.report({k: v for k, v in summary.items() if k != "validation"})
    return summary


def train_distributed(
    config: TrainConfig,
    dataset: Dataset,
    train: Dataset,
    out_dir: str | Path,
    num_workers: int = 2,
    use_gpu: bool = False,
    cpus_per_worker: float = 1.0,
) -> dict:
    """Run the same trainer on `num_workers` Ray Train workers; rank 0 writes the checkpoint."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init()
    out = Path(out_dir).resolve()
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"config": asdict(config), "dataset": dataset, "train": train, "out_dir": str(out)},
        scaling_config=ScalingConfig(
            num_workers=num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"GPU": 1} if use_gpu else {"CPU": cpus_per_worker},
        ),
        run_config=RunConfig(storage_path=str(out.parent / f"{out.name}-ray-train"), name="bertrec-train"),
    )
    result = trainer.fit()
    # Ray Train v2 hands back the workers' return value (rank 0's); v1 only reported metrics.
    returned = getattr(result, "return_value", None)
    if isinstance(returned, list):
        returned = returned[0]
    metrics = dict(returned or getattr(result, "metrics", None) or {})
    logger.info("distributed training finished: %s", metrics)
    return metrics
