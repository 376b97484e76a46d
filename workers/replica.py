"""EncoderReplica: the Ray actor shell around one BertEncoder and its Batcher."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from bertrec.config import ModelConfig, WorkersConfig

logger = logging.getLogger(__name__)


def _read_json(path: str) -> dict[str, Any]:
    if not path or not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _write_json(path: str, payload: dict[str, Any]) -> None:
    """Atomically: a replica reading it while it is written sees the old or the new content."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(payload, fh)
    os.replace(tmp, path)


def read_model_pointer(path: str) -> str:
    """The checkpoint path recorded in a model pointer file, or "" when there is none."""
    return _read_json(path).get("model_path", "")


def replica_settings(model: ModelConfig, workers: WorkersConfig, model_path: str) -> dict[str, Any]:
    """What a replica is built with and serves: a front end attaching to a shared replica must
    want the same (every model setting but the checkpoint folders, and the batching and CPU
    settings), or its vectors and queueing would differ from what it expects."""
    local_paths = ("path", "checkpoints_dir", "onnx_cache_dir")
    settings = {k: v for k, v in dataclasses.asdict(model).items() if k not in local_paths}
    built_with = ("cpus_per_replica", "max_batch_size", "max_wait_s", "max_batch_tokens", "max_queue")
    settings |= {k: getattr(workers, k) for k in built_with}
    return {"model_path": model_path, **settings}


BATCHING_KEYS = ("max_batch_size", "max_wait_s", "max_batch_tokens")


def batching_file(model_pointer: str) -> str:
    """Where the batching settings changed at run time are kept, beside the model pointer: a
    replica that Ray restarts reads them, so it does not fall back to the configured values."""
    return str(Path(model_pointer).with_name("active_batching.json")) if model_pointer else ""


def read_batching(path: str) -> dict[str, Any]:
    return {k: v for k, v in _read_json(path).items() if k in BATCHING_KEYS}


def write_batching(path: str, settings: dict[str, Any]) -> None:
    """Replace the stored run-time batching settings ({} = none: the configured values hold)."""
    if path:
        _write_json(path, settings)


def write_model_pointer(path: str, model_path: str) -> None:
    _write_json(path, {"model_path": model_path})


class EncoderReplica:
    """One model copy. Created through `ray.remote(EncoderReplica)` by the pool.

    The device is resolved here, after Ray has set CUDA_VISIBLE_DEVICES for this actor, so a
    replica with num_gpus=1 sees exactly its own GPU as cuda:0.
    """

    def __init__(
        self, name: str, model: ModelConfig, workers: WorkersConfig, torch_threads: int, model_pointer: str = ""
    ):
        import torch

        from bertrec.workers.device import resolve_device

        torch.set_num_threads(max(1, torch_threads))
        self.name = name
        self.model_config = model
        self.workers_config = workers
        self.device = resolve_device(model.device)
        # After a model swap the pointer names the promoted checkpoint, so a replica that Ray
        # restarts comes back with the model the service is serving, not the one it started with.
        path = read_model_pointer(model_pointer) or model.path
        # Batching settings changed at run time (Admin.ConfigureBatching) outlive a restart too.
        self.batching = {k: getattr(workers, k) for k in BATCHING_KEYS} | read_batching(batching_file(model_pointer))
        self.encoder, self.batcher = self._load(path)
        self.model_path = path
        self.staging: tuple | None = None
        self.staging_path = ""
        logger.info("replica %s ready on %s (pid %d)", name, self.encoder.device_label, os.getpid())

    def _load(self, path: str):
        from bertrec.workers.batching import Batcher
        from bertrec.workers.encoder import BertEncoder

        m, b = self.model_config, self.batching
        encoder = BertEncoder(
            path,
            device=self.device,
            max_length=m.max_length,
            max_batch_tokens=b["max_batch_tokens"],
            quantize=m.quantize,
            runtime=m.runtime,
            onnx_cache_dir=m.onnx_cache_dir,
            int8_calibration=m.int8_calibration,
        )
        batcher = Batcher(encoder.encode_items, b["max_batch_size"], b["max_wait_s"], self.workers_config.max_queue)
        return encoder, batcher

    async def encode(self, texts: list[str], deadline: float | None = None, staging: bool = False) -> np.ndarray:
        if staging:
            if self.staging is None:
                raise RuntimeError("no staging model loaded")
            return await self.staging[1].submit(texts, deadline)
        return await self.batcher.submit(texts, deadline)

    def load_staging(self, path: str) -> dict:
        """Load a second model beside the serving one (a swap encodes the catalogue with it)."""
        self.staging = self._load(path)
        self.staging_path = path
        return {"model": self.staging[0].model_name, "dim": self.staging[0].dim}

    def promote_staging(self) -> str:
        if self.staging is None:
            raise RuntimeError("no staging model loaded")
        self.encoder, self.batcher = self.staging
        self.model_path = self.staging_path
        self.staging = None
        return self.encoder.model_name

    def drop_staging(self) -> None:
        self.staging = None

    def configure_batching(
        self, max_batch_size: int | None = None, max_wait_s: float | None = None, max_batch_tokens: int | None = None
    ) -> dict[str, Any]:
        """Change batching now (None = keep), for the serving model and a staged one alike, and
        return the effective settings. The caller validates (the pool; config.check_batching)."""
        given = {"max_batch_size": max_batch_size, "max_wait_s": max_wait_s, "max_batch_tokens": max_batch_tokens}
        self.batching |= {k: v for k, v in given.items() if v is not None}
        for encoder, batcher in filter(None, [(self.encoder, self.batcher), self.staging]):
            batcher.configure(self.batching["max_batch_size"], self.batching["max_wait_s"])
            encoder.max_batch_tokens = self.batching["max_batch_tokens"]
        return dict(self.batching)

    def settings(self) -> dict[str, Any]:
        """The settings this replica was built with and the checkpoint it serves (see replica_settings)."""
        return {"name": self.name, **replica_settings(self.model_config, self.workers_config, self.model_path)}

    def info(self) -> dict:
        import ray

        stats = self.batcher.stats
        return {
            **self.batching,
            "name": self.name,
            "device": self.encoder.device_label,  # e.g. "cpu-int8"
            "quantize": self.encoder.quantize,
            "runtime": self.encoder.runtime,  # "onnx", "openvino" or "torch"
            "calibration": self.encoder.calibration,  # int8 on a user's calibration texts: their digest
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "model": self.encoder.model_name,
            "dim": self.encoder.dim,
            "encoded_texts": stats.texts,
            "batches": stats.batches,
            "mean_batch_size": stats.mean_batch_size,
            "queue_depth": self.batcher.queue_depth,
            "expired": stats.expired,
            "mean_queue_s": stats.mean_queue_s,
            "batch_sizes": stats.batch_sizes.to_dict(),
            "queue_times": stats.queue_times.to_dict(),
            **self.encoder.stats.to_dict(),
        }
