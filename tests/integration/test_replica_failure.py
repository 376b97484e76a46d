"""A replica killed mid-request: the request is retried on another replica and still answers."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from bertrec.client import Client
from tests.integration.helpers import make_config

pytestmark = pytest.mark.integration


def test_killing_a_replica_mid_request_still_answers(ray_cluster, server_thread_factory, tmp_path):
    server = server_thread_factory(make_config(tmp_path, workers={"replicas": 2, "max_batch_size": 8}))
    client = Client(server.target, timeout_s=120)
    try:
        server.wait_ready(client)
        texts = [f"movie number {i}, a long story about many things " * 6 for i in range(480)]
        result: dict = {}

        def encode():
            result["vectors"] = client.encode(texts)

        caller = threading.Thread(target=encode)
        caller.start()
        time.sleep(1.0)  # both replicas are busy with their share
        pool = server.state.pool
        victim = pool.replicas[0]
        ray_cluster.kill(victim, no_restart=False)  # Ray restarts it; the pool retries what it held
        caller.join(120)
        vectors = np.array(result["vectors"])
        assert vectors.shape == (480, 384)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
        # The answer is the real encoding, not garbage: spot-check against a fresh request.
        np.testing.assert_allclose(np.array(client.encode(texts[:3])), vectors[:3], atol=1e-4)
        # The killed replica comes back.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(r.healthy for r in client.info().replicas):
                break
            time.sleep(0.5)
        assert all(r.healthy for r in client.info().replicas)
    finally:
        client.close()
        server.stop()
