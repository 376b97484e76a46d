"""A shared encoder pool (workers.pool_name): attach only to replicas with the same settings,
never kill them, refuse a hot swap. No Ray: the replicas are stand-ins."""

from __future__ import annotations

import asyncio

import pytest

from bertrec.config import ModelConfig, WorkersConfig, load_config
from bertrec.errors import FailedPrecondition
from bertrec.workers.pool import RayEncoderPool
from bertrec.workers.replica import replica_settings


class _Method:
    def __init__(self, result):
        self.result = result

    def remote(self, *args):
        async def answer():
            return dict(self.result)

        return answer()


class _Replica:
    """Answers `settings.remote()` as an EncoderReplica built with these configs would."""

    def __init__(self, name: str, model: ModelConfig, workers: WorkersConfig):
        self.settings = _Method({"name": name, **replica_settings(model, workers, model.path)})


def _pool(**workers) -> RayEncoderPool:
    return RayEncoderPool(ModelConfig(path="/models/minilm"), WorkersConfig(pool_name="shared", **workers))


def test_pool_name_makes_a_shared_pool_with_fixed_names():
    assert load_config(environ={"BERTREC_WORKERS_POOL_NAME": "recs"}).workers.pool_name == "recs"
    private = RayEncoderPool(ModelConfig(), WorkersConfig())
    assert not private.shared and private.prefix.startswith("bertrec-encoder-")
    shared = _pool()
    assert shared.shared and shared.prefix == "shared"


def test_attaches_to_replicas_built_with_the_same_settings():
    pool = _pool()
    twin = _Replica("shared-0", pool.model_config, pool.workers_config)
    asyncio.run(pool._check_shared([twin, twin]))


@pytest.mark.parametrize(
    ("model", "workers", "why"),
    [
        ({"path": "/models/other"}, {}, "model_path: pool has '/models/other', this front end '/models/minilm'"),
        ({"max_length": 64}, {}, "max_length: pool has 64, this front end 128"),
        ({}, {"max_queue": 16}, "max_queue: pool has 16, this front end 4096"),
    ],
)
def test_refuses_replicas_built_with_other_settings(model, workers, why):
    pool = _pool()
    other = _Replica(
        "shared-1",
        ModelConfig(**{"path": "/models/minilm", **model}),
        WorkersConfig(pool_name="shared", **workers),
    )
    with pytest.raises(FailedPrecondition, match=r"\(replica shared-1\) was built with other settings") as refused:
        asyncio.run(pool._check_shared([other]))
    assert why in str(refused.value)


def test_shutdown_leaves_shared_replicas_alone_and_a_swap_is_refused(monkeypatch):
    import ray

    killed = []
    monkeypatch.setattr(ray, "kill", lambda handle, **kw: killed.append(handle))
    pool = _pool()
    pool.replicas = ["shared-0", "shared-1"]
    with pytest.raises(FailedPrecondition, match="shared with other front ends"):
        asyncio.run(pool.load_staging("/models/next"))
    pool.shutdown()
    assert killed == [] and pool.replicas == []

    private = RayEncoderPool(ModelConfig(), WorkersConfig())
    private.replicas = ["r0", "r1"]
    private.shutdown()
    assert killed == ["r0", "r1"]
