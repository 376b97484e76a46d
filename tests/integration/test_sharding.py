"""A server on a 2-shard index answers as one on a single index; a changed shard count rebuilds."""

from __future__ import annotations

import json
import logging
import uuid

import pytest

from bertrec.client import Client
from tests.integration.helpers import catalogue, make_config

pytestmark = pytest.mark.integration

ITEMS = 150


def _answers(client, users, items):
    """(id, score) lists for user, text and history queries."""
    out = [[(r.item_id, r.score) for r in client.recommend(u, k=10)] for u in users]
    out.append([(r.item_id, r.score) for r in client.recommend(text="a funny film about friendship", k=10)])
    out.append([(r.item_id, r.score) for r in client.recommend(history=[items[0].id, items[5].id], k=10)])
    return out


def _start(factory, data_dir, **index):
    server = factory(make_config(data_dir, workers={"replicas": 1}, index={"use_gpu": "no", **index}))
    client = Client(server.target, timeout_s=120)
    server.wait_ready(client)
    return server, client


@pytest.fixture
def prefix(ray_cluster):
    """A shard name prefix of this test's own; its detached shards are removed afterwards."""
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    yield prefix
    for i in range(2):
        try:
            ray_cluster.kill(ray_cluster.get_actor(f"{prefix}-shard-{i}"), no_restart=True)
        except ValueError:  # never made
            pass


def test_two_shards_answer_like_one_index(server_thread_factory, tmp_path, caplog, prefix):
    items, ratings = catalogue()
    items = items[:ITEMS]
    ids = {i.id for i in items}
    ratings = [r for r in ratings if r.item_id in ids]
    users = sorted({r.user_id for r in ratings})[:3]
    data_dir = tmp_path / "data"

    server, client = _start(server_thread_factory, data_dir, shards=2, shard_prefix=prefix, cpus_per_shard=0)
    try:
        client.upsert_items(items)
        for start in range(0, len(ratings), 500):
            client.record_interactions(ratings[start : start + 500])
        gone = items[1].id
        client.delete_items([gone])
        info = client.info()
        assert info.index_size == info.item_count == ITEMS - 1
        assert info.index_device.endswith("x2 shards")
        assert all(server.state.catalog.index.sizes)  # both shards hold items
        sharded = _answers(client, users, items)
        assert all(len(a) == 10 for a in sharded)
        assert gone not in {i for a in sharded for i, _ in a}
    finally:
        client.close()
        server.stop()  # writes the sharded snapshot
    meta = json.loads((data_dir / "index" / "meta.json").read_text())
    assert meta["shards"] == 2 and (data_dir / "index" / "shard-1" / "index.faiss").exists()

    # Restarted with the same count: the shards load their snapshot files, nothing is rebuilt.
    for logger in ("bertrec.server.catalog", "bertrec.workers.shards"):
        caplog.set_level(logging.INFO, logger=logger)
    server, client = _start(server_thread_factory, data_dir, shards=2, shard_prefix=prefix, cpus_per_shard=0)
    try:
        assert "index snapshot loaded" in caplog.text and "rebuilding" not in caplog.text
        assert _answers(client, users, items) == sharded
    finally:
        client.close()
        server.stop()

    # Same data dir, one index: the 2-shard snapshot does not fit, so the index is rebuilt from the store.
    server, client = _start(server_thread_factory, data_dir)
    try:
        assert "config wants 1: rebuilding" in caplog.text
        assert "shards" not in json.loads((data_dir / "index" / "meta.json").read_text())
        assert client.info().index_size == ITEMS - 1
        single = _answers(client, users, items)
    finally:
        client.close()
        server.stop()

    for got, want in zip(sharded, single):
        assert [i for i, _ in got] == [i for i, _ in want]  # Flat on both sides: exact, same top ids
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-5)
