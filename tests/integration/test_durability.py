"""Restarts: a new server process on the same data dir keeps every acknowledged item and interaction."""

from __future__ import annotations

import json
import signal

import pytest

from tests.integration.helpers import ServerProcess, catalogue

pytestmark = pytest.mark.integration


def test_restart_keeps_everything_and_reuses_vectors(ray_cluster, tmp_path):
    gcs = ray_cluster.get_runtime_context().gcs_address
    data_dir = tmp_path / "data"
    items, ratings = catalogue()
    items, ids = items[:120], {i.id for i in items[:120]}
    ratings = [r for r in ratings if r.item_id in ids]
    user = ratings[0].user_id

    first = ServerProcess(data_dir, gcs, tmp_path / "server.log")
    first.client.upsert_items(items)
    first.client.record_interactions(ratings)
    before = [r.item_id for r in first.client.recommend(user, k=10)]
    first.kill(signal.SIGKILL)  # a crash: no shutdown hook runs

    second = ServerProcess(data_dir, gcs, tmp_path / "server.log")
    info = second.client.info()
    assert (info.item_count, info.index_size, info.interaction_count) == (len(items), len(items), len(ratings))
    assert [r.item_id for r in second.client.recommend(user, k=10)] == before
    assert sum(r.encoded_texts for r in second.client.info().replicas) == 0  # vectors came from the store
    second.kill(signal.SIGTERM)  # graceful: the index snapshot is written
    assert second.proc.returncode == 0

    store_version = info.store_version
    meta = json.loads((data_dir / "index" / "meta.json").read_text())
    assert meta["version"] == store_version

    third = ServerProcess(data_dir, gcs, tmp_path / "server.log")
    assert [r.item_id for r in third.client.recommend(user, k=10)] == before
    assert third.client.info().index_size == len(items)
    third.kill(signal.SIGTERM)
    log = (tmp_path / "server.log").read_text()
    assert "index snapshot loaded" in log
