"""The learned user towers on the real model, a few steps on a MovieLens slice: the loss falls, the
saved tower gives the training-time user vectors back, and evaluation and the service use it."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from bertrec.client import Client
from bertrec.server.users import UserTower, pool_history
from bertrec.store import HistoryEntry
from bertrec.training.trainer import ContrastiveTrainer, TrainConfig
from bertrec.training.user_tower import NONE
from bertrec.workers.encoder import BertEncoder
from tests.integration.helpers import make_config, movielens_slice

pytestmark = pytest.mark.integration

HALF_LIFE = 20.0  # ServerConfig.history_half_life, which training uses


def _config(tower: str, **changes) -> TrainConfig:
    settings = dict(batch_size=8, max_steps=3, lr=1e-4, tower_lr=1e-2, history_items=5, user_max_length=64)
    return TrainConfig(user_tower=tower, **{**settings, **changes})


def _trained(tower: str, out):
    """A few steps on one batch of examples: the loss on it must fall."""
    trainer = ContrastiveTrainer(_config(tower), movielens_slice(300), movielens_slice(300), out)
    trainer.pairs = trainer.pairs[:8]
    return trainer, trainer.train()


def _users(trainer, batch) -> np.ndarray:
    """The user vectors training computes, without dropout."""
    trainer.model.eval()
    with trainer.torch.no_grad():
        users, _ = trainer.tower_vectors(batch)
    trainer.model.train()
    return users.numpy()


def _histories(batch) -> list[list[HistoryEntry]]:
    return [[HistoryEntry(int(i), float(n), 1.0) for n, i in enumerate(row) if i != NONE] for row in batch[:, :-1]]


def _item_vectors(checkpoint, texts: dict[int, str], ids) -> dict[int, np.ndarray]:
    ids = sorted(set(ids))
    return dict(zip(ids, BertEncoder(str(checkpoint)).encode_items([texts[i] for i in ids])))


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    out = tmp_path_factory.mktemp("towers") / "pooled"
    trainer, summary = _trained("pooled", out)
    return trainer, summary, out


@pytest.fixture(scope="module")
def history_text(tmp_path_factory):
    out = tmp_path_factory.mktemp("towers") / "history-text"
    trainer, summary = _trained("history-text", out)
    return trainer, summary, out


def test_pooled_tower_learns_and_reloads(pooled):
    trainer, summary, out = pooled
    assert summary["last_loss"] < summary["first_loss"]
    tower = UserTower.load(str(out))
    assert (tower.kind, tower.history_items) == ("pooled", 5) and np.abs(tower.weight).max() > 0
    batch = trainer.pairs
    vectors = _item_vectors(out, trainer.texts, batch[:, :-1][batch[:, :-1] != NONE].tolist())
    served = np.stack([tower.pooled(h, vectors, HALF_LIFE, 384) for h in _histories(batch)])
    np.testing.assert_allclose(served, _users(trainer, batch), atol=1e-5)
    assert "user tower: `pooled`" in (out / "README.md").read_text()
    assert json.loads((out / "bertrec_training.json").read_text())["config"]["user_tower"] == "pooled"

    ds = movielens_slice(300)
    more = dataclasses.replace(_config("pooled"), init_from=str(out), max_steps=4)
    resumed = ContrastiveTrainer(more, ds, ds, out / "resumed")
    resumed.resume(out)
    np.testing.assert_array_equal(resumed.user_layer.weight.detach().numpy(), tower.weight)
    assert resumed.step == 3 and resumed.train()["steps"] == 4


def test_pooled_tower_starts_as_plain_pooling(tmp_path):
    ds = movielens_slice(300)
    trainer = ContrastiveTrainer(_config("pooled"), ds, ds, tmp_path / "fresh")
    batch = trainer.pairs[:8]
    ids = np.unique(batch[:, :-1][batch[:, :-1] != NONE])
    trainer.model.eval()
    with trainer.torch.no_grad():
        vectors = dict(zip(ids.tolist(), trainer._encode(ids).numpy()))
    plain = np.stack([pool_history(h, vectors, HALF_LIFE, 384).vector for h in _histories(batch)])
    np.testing.assert_allclose(_users(trainer, batch), plain, atol=1e-5)


def test_history_text_tower_learns_and_reloads(history_text):
    trainer, summary, out = history_text
    assert summary["last_loss"] < summary["first_loss"]
    tower = UserTower.load(str(out))
    assert (tower.kind, tower.max_length, tower.weight) == ("history-text", 64, None)
    tower = dataclasses.replace(tower, encode=BertEncoder(str(out), max_length=tower.max_length).encode_users)
    served = tower.text_vectors(_histories(trainer.pairs), trainer.texts, 384)
    np.testing.assert_allclose(served, _users(trainer, trainer.pairs), atol=1e-5)
    assert "user tower: `history-text`" in (out / "README.md").read_text()


def test_evaluation_uses_the_checkpoints_tower(pooled, tmp_path):
    from bertrec.evaluation.experiment import run_evaluation

    _, _, out = pooled
    summary = run_evaluation(movielens_slice(300), ["warm"], ["zero-shot"], [0], tmp_path, model_path=str(out))
    assert "fine-tuned" in json.dumps(summary)
    assert json.loads((tmp_path / "evaluation.json").read_text())["user_tower"] == "pooled"


def test_served_towers_after_swaps(ray_cluster, server_thread_factory, pooled, history_text, tmp_path):
    for name, (_, _, out) in (("pooled", pooled), ("history-text", history_text)):
        shutil.copytree(out, tmp_path / "checkpoints" / name)
    config = make_config(
        tmp_path / "data", workers={"replicas": 1}, model={"checkpoints_dir": str(tmp_path / "checkpoints")}
    )
    server = server_thread_factory(config)
    client = Client(server.target, timeout_s=120)
    items = movielens_slice(60).items
    texts = {i.id: i.text for i in items}
    entries = [HistoryEntry(i.id, float(n), 1.0) for n, i in enumerate(items[3:30:8])]
    history = [e.item_id for e in entries]
    served = {}
    try:
        server.wait_ready(client)
        client.upsert_items(items)
        for name in ("pooled", "history-text"):
            assert [stage for stage, *_ in client.load_model(name)][-1] == "done"
            served[name] = list(client.recommend(history=history, k=10))
    finally:
        client.close()
        server.stop()
    for name, results in served.items():
        out = tmp_path / "checkpoints" / name
        vectors = _item_vectors(out, texts, texts)
        tower = UserTower.load(str(out))
        if name == "pooled":
            user = tower.pooled(entries, vectors, HALF_LIFE, 384)
        else:  # through the replicas, which encode up to model.max_length tokens
            user = BertEncoder(str(out)).encode_users([tower.text(entries, texts)])[0]
        plain = pool_history(entries, vectors, HALF_LIFE, 384).vector
        scores = np.array([r.score for r in results])
        chosen = np.stack([vectors[r.item_id] for r in results])
        np.testing.assert_allclose(scores, chosen @ user, atol=1e-4)
        assert np.abs(chosen @ plain - scores).max() > 1e-2  # the checkpoint's tower, not plain pooling
