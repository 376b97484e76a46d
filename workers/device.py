"""The one place that probes hardware: torch devices for replicas, GPU counts for placement."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def resolve_device(requested: str) -> str:
    """ "auto" -> "cuda" when a GPU is visible to this process, else "cpu"; anything else is kept."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} requested but no CUDA GPU is visible")
    return requested


def faiss_gpu_count() -> int:
    """GPUs FAISS can use: 0 when the faiss build has no GPU support."""
    import faiss

    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return int(get_num_gpus()) if get_num_gpus else 0
