"""Every FAISS GPU helper in one file: moving an index to the visible GPUs and back."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def gpu_available(policy: str) -> int:
    """GPUs to use for the index under `policy` ("auto" or "no"): 0 without faiss GPU support."""
    if policy == "no":
        return 0
    from bertrec.workers.device import faiss_gpu_count

    return faiss_gpu_count()


def to_gpu(index, gpus: int):
    """Shard `index` over all visible GPUs (each holds part of the vectors), fp16 storage."""
    import faiss

    options = faiss.GpuMultipleClonerOptions()
    options.shard = True
    options.useFloat16 = True
    if gpus == 1:
        resources = faiss.StandardGpuResources()
        single = faiss.GpuClonerOptions()
        single.useFloat16 = True
        gpu_index = faiss.index_cpu_to_gpu(resources, 0, index, single)
        gpu_index.referenced_resources = resources  # keep alive with the index
        return gpu_index
    return faiss.index_cpu_to_all_gpus(index, co=options, ngpu=gpus)


def to_cpu(index):
    import faiss

    return faiss.index_gpu_to_cpu(index)
