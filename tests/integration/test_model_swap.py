"""Hot swap: a trained checkpoint replaces the served encoder while the old one keeps answering."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest

from bertrec.client import Client, InvalidRequest, NotFound
from bertrec.errors import FailedPrecondition
from bertrec.training.trainer import CONFIG_FILE, ContrastiveTrainer, TrainConfig
from tests.integration.helpers import catalogue, make_config
from tests.integration.test_training import _planted

pytestmark = pytest.mark.integration


def _set_stored_ndcg(checkpoint, ndcg):
    record_file = checkpoint / CONFIG_FILE
    record = json.loads(record_file.read_text())
    record["summary"]["validation"] = {"ndcg@10": ndcg}
    record_file.write_text(json.dumps(record))


def test_swap_gate_paths_and_restart(ray_cluster, server_thread_factory, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    ds = _planted()
    ContrastiveTrainer(
        TrainConfig(batch_size=16, max_steps=3, max_length=16, lr=1e-4), ds, ds, checkpoints / "good"
    ).train()
    _set_stored_ndcg(checkpoints / "good", 0.05)
    shutil.copytree(checkpoints / "good", checkpoints / "worse")
    _set_stored_ndcg(checkpoints / "worse", 0.01)

    config = make_config(tmp_path / "data", workers={"replicas": 1}, model={"checkpoints_dir": str(checkpoints)})
    server = server_thread_factory(config)
    client = Client(server.target, timeout_s=120)
    items, ratings = catalogue()
    items = items[:80]
    ids = {i.id for i in items}
    user = ratings[0].user_id
    try:
        server.wait_ready(client)
        client.upsert_items(items)
        mine = [r for r in ratings if r.item_id in ids]
        for start in range(0, len(mine), 500):
            client.record_interactions(mine[start : start + 500])
        before = np.array(client.encode(["Toy Story (1995)"]))

        # Requests keep succeeding while the catalogue is re-encoded and the index swapped.
        errors: list[Exception] = []
        stop = threading.Event()

        def keep_asking():
            while not stop.is_set():
                try:
                    assert len(list(client.recommend(user, k=5))) == 5
                except Exception as exc:  # collected, asserted below
                    errors.append(exc)

        asker = threading.Thread(target=keep_asking)
        asker.start()
        stages = [stage for stage, *_ in client.load_model("good")]
        stop.set()
        asker.join()
        assert errors == []
        assert stages[0] == "loading" and "encoding" in stages and stages[-2:] == ["swapped", "done"]

        info = client.info()
        assert info.model == "good" and info.index_size == len(items)
        from bertrec.workers.encoder import BertEncoder

        after = np.array(client.encode(["Toy Story (1995)"]))
        expected = BertEncoder(str(checkpoints / "good"), "cpu").encode_items(["Toy Story (1995)"])
        np.testing.assert_allclose(after, expected, atol=1e-4)
        assert not np.allclose(after, before, atol=1e-3)
        assert len(list(client.recommend(user, k=5))) == 5

        # The gate: a checkpoint with a worse stored evaluation is refused unless forced.
        with pytest.raises(FailedPrecondition, match="0.0100 < serving 0.0500"):
            list(client.load_model("worse"))
        assert client.info().model == "good"
        assert [s for s, *_ in client.load_model("worse", force=True)][-1] == "done"
        assert client.info().model == "worse"

        # Paths cannot leave the checkpoints folder.
        with pytest.raises(InvalidRequest):
            list(client.load_model("../data"))
        with pytest.raises(InvalidRequest):
            list(client.load_model("/etc"))
        with pytest.raises(NotFound):
            list(client.load_model("missing"))
    finally:
        client.close()
        server.stop()

    # A restart keeps serving the promoted model, from stored vectors (nothing re-encoded).
    server = server_thread_factory(
        make_config(tmp_path / "data", workers={"replicas": 1}, model={"checkpoints_dir": str(checkpoints)})
    )
    client = Client(server.target, timeout_s=120)
    try:
        server.wait_ready(client)
        info = client.info()
        assert info.model == "worse" and info.index_size == len(items)
        assert sum(r.encoded_texts for r in info.replicas) == 0
    finally:
        client.close()
        server.stop()
