"""GPU path: fp16 CUDA encoder vs CPU, FAISS GPU index vs CPU, Ray pinning one replica per GPU.

Skipped on machines without a CUDA GPU (CI has none)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

TEXTS = [f"Movie {i}: a story about {w}" for i, w in enumerate(["love", "war", "space", "heists", "dogs"] * 20)]


def test_fp16_cuda_encoder_agrees_with_cpu():
    from bertrec.workers.encoder import BertEncoder

    cpu = BertEncoder("", "cpu").encode_items(TEXTS)
    gpu_encoder = BertEncoder("", "cuda")
    assert next(gpu_encoder.model.parameters()).dtype == torch.float16
    gpu = gpu_encoder.encode_items(TEXTS)
    cosine = np.sum(cpu * gpu, axis=1)
    assert cosine.min() > 0.995


def test_int8_is_ignored_on_cuda():
    from bertrec.workers.encoder import BertEncoder

    encoder = BertEncoder("", "cuda", quantize="int8")
    assert encoder.quantize == "none" and encoder.device_label == "cuda"
    assert next(encoder.model.parameters()).dtype == torch.float16


def test_faiss_gpu_index_matches_cpu():
    from bertrec.workers.device import faiss_gpu_count
    from bertrec.workers.index import FaissIndex

    if faiss_gpu_count() == 0:
        pytest.skip("this faiss build has no GPU support (install faiss-gpu)")
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(20000, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(1, 20001, dtype=np.int64) * 1000
    cpu, gpu = FaissIndex(64, "Flat", use_gpu="no"), FaissIndex(64, "Flat", use_gpu="auto")
    cpu.add(ids, vectors)
    gpu.add(ids, vectors)
    assert gpu.device.startswith("cuda")
    _, cpu_ids = cpu.search(vectors[:50], 10)
    _, gpu_ids = gpu.search(vectors[:50], 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(cpu_ids, gpu_ids)])
    assert overlap > 0.97  # fp16 storage on the GPU may swap near-ties


def test_ray_pins_one_replica_per_gpu():
    ray = pytest.importorskip("ray")
    from bertrec.config import ModelConfig, WorkersConfig
    from bertrec.workers.pool import RayEncoderPool

    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    pool = RayEncoderPool(ModelConfig(), WorkersConfig())

    async def main():
        await pool.start()
        try:
            infos = await pool.info()
            vectors = await pool.encode(TEXTS)
            return infos, vectors
        finally:
            pool.shutdown()

    infos, vectors = asyncio.run(main())
    assert len(infos) == gpus and all(i["device"] == "cuda" for i in infos)
    assert vectors.shape == (len(TEXTS), 384)
