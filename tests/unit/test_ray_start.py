"""ensure_ray: a local Ray start that times out is retried, and its leftover processes are stopped."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bertrec.config import WorkersConfig
from bertrec.workers import pool

TIMED_OUT = "The current node timed out during startup. This could happen because ..."
NO_GCS_PORT = "Timed out waiting for file /tmp/ray/session_2026-11-29_03-37-10_767933_31117/gcs_server_port_1bed85e6"


class FakeRay:
    """ray.init stand-in: each call runs the next scripted outcome; a failing one leaves a child
    process behind, as a half-started Ray node does."""

    def __init__(self, outcomes: list[Exception | None]):
        self.outcomes = outcomes
        self.calls: list[dict] = []
        self.leftovers: list[subprocess.Popen] = []

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs) -> None:
        self.calls.append(kwargs)
        outcome = self.outcomes[len(self.calls) - 1]
        if outcome is not None:
            self.leftovers.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]))
            raise outcome


@pytest.fixture
def fake_ray(monkeypatch):
    def install(outcomes):
        fake = FakeRay(outcomes)
        monkeypatch.setitem(sys.modules, "ray", fake)
        return fake

    yield install


@pytest.mark.parametrize("message", [TIMED_OUT, NO_GCS_PORT])
def test_a_timed_out_local_start_is_retried_and_its_processes_stopped(fake_ray, message):
    ray = fake_ray([RuntimeError(message), None])
    pool.ensure_ray(WorkersConfig(ray_num_cpus=2))
    assert len(ray.calls) == 2 and ray.calls[1]["num_cpus"] == 2
    assert ray.leftovers[0].wait(timeout=10) is not None  # stopped, not left running


def test_local_start_gives_up_after_the_last_attempt(fake_ray):
    ray = fake_ray([Exception(TIMED_OUT)] * pool.LOCAL_START_ATTEMPTS)
    with pytest.raises(Exception, match="timed out during startup"):
        pool.ensure_ray(WorkersConfig())
    assert len(ray.calls) == pool.LOCAL_START_ATTEMPTS
    for child in ray.leftovers[:-1]:
        assert child.wait(timeout=10) is not None
    ray.leftovers[-1].kill()


def test_other_failures_and_cluster_addresses_are_not_retried(fake_ray):
    ray = fake_ray([ValueError("bad num_cpus"), None])
    with pytest.raises(ValueError):
        pool.ensure_ray(WorkersConfig())
    assert len(ray.calls) == 1
    ray.leftovers[0].kill()

    ray = fake_ray([Exception(TIMED_OUT), None])
    with pytest.raises(Exception, match="timed out"):
        pool.ensure_ray(WorkersConfig(ray_address="10.0.0.1:6379"))
    assert len(ray.calls) == 1 and ray.calls[0]["address"] == "10.0.0.1:6379"
    ray.leftovers[0].kill()


def test_a_local_ray_starts_without_its_dashboard_unless_asked(fake_ray):
    ray = fake_ray([None, None, None])
    pool.ensure_ray(WorkersConfig())
    pool.ensure_ray(WorkersConfig(ray_dashboard=True))
    pool.ensure_ray(WorkersConfig(ray_address="auto"))  # a joined cluster keeps what `ray start` gave it
    assert [call.get("include_dashboard") for call in ray.calls] == [False, True, None]
