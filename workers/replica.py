"""EncoderReplica: the Ray actor shell around one BertEncoder and its Batcher."""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from bertrec.config import ModelConfig, WorkersConfig

logger = logging.getLogger(__name__)


class EncoderReplica:
    """One model copy. Created through `ray.remote(EncoderReplica)` by the pool.

    The device is resolved here, after Ray has set CUDA_VISIBLE_DEVICES for this actor, so a
    replica with num_gpus=1 sees exactly its own GPU as cuda:0.
    """

    def __init__(self, name: str, model: ModelConfig, workers: WorkersConfig, torch_threads: int):
        import torch

        from bertrec.workers.batching import Batcher
        from bertrec.workers.device import resolve_device
        from bertrec.workers.encoder import BertEncoder

        torch.set_num_threads(max(1, torch_threads))
        self.name = name
        self.device = resolve_device(model.device)
        self.encoder = BertEncoder(model.path, device=self.device, max_length=model.max_length)
        self.batcher = Batcher(
            self.encoder.encode_items,
            max_batch_size=workers.max_batch_size,
            max_wait_s=workers.max_wait_s,
            max_queue=workers.max_queue,
        )
        self.started_at = time.time()
        logger.info("replica %s ready on %s (pid %d)", name, self.device, os.getpid())

    async def encode(self, texts: list[str], deadline: float | None = None) -> np.ndarray:
        return await self.batcher.submit(texts, deadline)

    def configure_batching(self, max_batch_size: int | None = None, max_wait_s: float | None = None) -> None:
        self.batcher.configure(max_batch_size, max_wait_s)

    def info(self) -> dict:
        import ray

        stats = self.batcher.stats
        return {
            "name": self.name,
            "device": self.device,
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "model": self.encoder.model_name,
            "dim": self.encoder.dim,
            "encoded_texts": stats.texts,
            "batches": stats.batches,
            "mean_batch_size": stats.mean_batch_size,
            "queue_depth": self.batcher.queue_depth,
            "expired": stats.expired,
        }

    def pid(self) -> int:
        return os.getpid()
