"""A served int8 deployment (`model.quantize = "int8"`): the replicas run the calibrated int8 model
on OpenVINO inside Ray, say so in Info, and encode close to the fp32 model in this process."""

from __future__ import annotations

import numpy as np
import pytest

from bertrec.client import Client
from tests.integration.helpers import make_config

pytestmark = pytest.mark.integration

TITLES = ["Heat (1995)", "Toy Story (1995)", "Alien (1979)", "Amelie (2001)", "Se7en (1995)"]


def test_int8_replicas_serve_calibrated_int8(ray_cluster, server_thread_factory, tmp_path):
    from bertrec.workers.encoder import BertEncoder

    server = server_thread_factory(make_config(tmp_path / "data", model={"quantize": "int8"}))
    client = Client(server.target, timeout_s=120)
    try:
        server.wait_ready(client)
        info = client.info()
        assert [(r.device, r.runtime) for r in info.replicas] == [("cpu-int8", "openvino")] * 2
        served = np.asarray(client.encode(TITLES), np.float32)
        fp32 = BertEncoder("", "cpu").encode_items(TITLES)
        assert np.sum(served * fp32, axis=1).min() >= 0.98
        # The same texts one by one: static int8 gives a text one vector whatever it is batched with.
        alone = np.asarray([client.encode([t])[0] for t in TITLES], np.float32)
        np.testing.assert_allclose(np.sum(alone * served, axis=1), 1.0, atol=1e-4)
    finally:
        client.close()
        server.stop()
