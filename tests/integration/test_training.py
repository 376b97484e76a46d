"""A tiny fine-tuning run on the real model: the loss falls, resume continues, the checkpoint serves."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bertrec.client import Client
from bertrec.evaluation.data import Dataset
from bertrec.training.trainer import CONFIG_FILE, ContrastiveTrainer, TrainConfig
from bertrec.types import Item
from tests.integration.helpers import make_config

pytestmark = pytest.mark.integration

GENRES = ["space", "cooking", "horses", "pirates"]


def _planted(n_items=24, n_users=40):
    """Users like items of one theme; titles are neutral words, so only training can link them."""
    words = [
        "Amber",
        "Birch",
        "Cobalt",
        "Dune",
        "Ember",
        "Fjord",
        "Granite",
        "Harbor",
        "Indigo",
        "Juniper",
        "Kestrel",
        "Lumen",
        "Meadow",
        "Nimbus",
        "Onyx",
        "Prairie",
        "Quartz",
        "Raven",
        "Sierra",
        "Tundra",
        "Umber",
        "Vale",
        "Willow",
        "Zephyr",
    ]
    items = [Item(i + 1, f"{words[i]} (2001)", {"theme": GENRES[i % 4]}) for i in range(n_items)]
    rng = np.random.default_rng(0)
    users, ids, ts = [], [], []
    for u in range(n_users):
        theme = u % 4
        mine = [i.id for i in items if i.metadata["theme"] == GENRES[theme]]
        for t, item in enumerate(rng.permutation(mine)):
            users.append(f"u{u}")
            ids.append(int(item))
            ts.append(float(t))
    ds = Dataset(items, np.array(users), np.array(ids), np.array(ts), np.full(len(ids), 5.0, np.float32), 4.0)
    return ds


def _theme_separation(trainer, ds) -> float:
    """Mean cosine between items of the same theme minus between items of different themes."""
    from bertrec.training.validation import encode_with

    vectors = encode_with(trainer, ds)
    themes = np.array([i.metadata["theme"] for i in ds.items])
    sims = vectors @ vectors.T
    same = themes[:, None] == themes[None, :]
    off_diagonal = ~np.eye(len(themes), dtype=bool)
    return float(sims[same & off_diagonal].mean() - sims[~same].mean())


def test_loss_falls_and_resume_continues(tmp_path):
    ds = _planted()
    config = TrainConfig(batch_size=16, lr=3e-4, epochs=100, max_steps=16, temperature=0.1, max_length=16)
    trainer = ContrastiveTrainer(config, ds, ds, tmp_path / "ckpt")
    before = _theme_separation(trainer, ds)
    summary = trainer.train()
    assert summary["steps"] == 16
    assert summary["last_loss"] < summary["first_loss"]
    # What training is for: items liked by the same users move together, the others apart.
    assert _theme_separation(trainer, ds) > before + 0.02
    card = (tmp_path / "ckpt" / "README.md").read_text()
    assert "in-batch negatives" in card and "steps 16" in card
    assert json.loads((tmp_path / "ckpt" / CONFIG_FILE).read_text())["config"]["lr"] == 3e-4

    more = TrainConfig(**{**config.__dict__, "max_steps": 20, "init_from": str(tmp_path / "ckpt")})
    resumed = ContrastiveTrainer(more, ds, ds, tmp_path / "ckpt")
    resumed.resume(tmp_path / "ckpt")
    assert resumed.step == 16 and len(resumed.losses) == 16
    assert resumed.train()["steps"] == 20


def test_hard_negatives_are_near_but_never_co_liked(tmp_path):
    ds = _planted()
    config = TrainConfig(batch_size=8, max_steps=3, max_length=16, hard_negatives=2, hard_negative_pool=10)
    trainer = ContrastiveTrainer(config, ds, ds, tmp_path / "hn")
    summary = trainer.train()
    assert summary["steps"] == 3 and np.isfinite(summary["last_loss"])
    assert trainer.neighbours and all(len(v) == 11 for v in trainer.neighbours.values())
    batch = trainer.pairs[:8]
    negatives = trainer._hard_negatives(batch)
    assert len(negatives) == 16
    for (anchor, positive), pair_negatives in zip(batch.tolist(), negatives.reshape(8, 2).tolist()):
        assert not set(pair_negatives) & (trainer.co_liked[anchor] | {anchor, positive})
        assert set(pair_negatives) <= set(trainer.neighbours[anchor].tolist())
    assert "hard negatives" in (tmp_path / "hn" / "README.md").read_text()


def test_keep_best_saves_the_weights_that_validated_best(tmp_path):
    """A scripted validator (best at step 4 of 8) stands in for the real one: the saved checkpoint
    must be step 4's weights, not the last step's."""
    ds = _planted()
    config = TrainConfig(batch_size=16, lr=3e-4, epochs=100, max_steps=8, temperature=0.1, max_length=16)
    trainer = ContrastiveTrainer(config, ds, ds, tmp_path / "best")
    scores = iter([0.10, 0.12, 0.30, 0.20, 0.25])  # steps 0, 2, 4, 6, 8
    weights = {}

    def validate():
        weights[trainer.step] = trainer.model.encoder.layer[5].output.dense.weight.detach().clone()
        return {"ndcg@10": next(scores)}

    summary = trainer.train(validate, validate_every=2, keep_best=True)
    assert summary["steps"] == 8 and summary["best_step"] == 4 and summary["validation"]["ndcg@10"] == 0.30
    assert not weights[4].equal(weights[8])
    assert trainer.model.encoder.layer[5].output.dense.weight.equal(weights[4])
    from transformers import AutoModel

    saved = AutoModel.from_pretrained(tmp_path / "best").encoder.layer[5].output.dense.weight
    assert saved.equal(weights[4])
    assert json.loads((tmp_path / "best" / CONFIG_FILE).read_text())["summary"]["best_step"] == 4


def test_keep_best_keeps_the_start_when_tuning_only_hurts(tmp_path):
    ds = _planted()
    config = TrainConfig(batch_size=16, lr=3e-4, epochs=100, max_steps=4, temperature=0.1, max_length=16)
    trainer = ContrastiveTrainer(config, ds, ds, tmp_path / "start")
    start = trainer.model.encoder.layer[5].output.dense.weight.detach().clone()
    scores = iter([0.5, 0.1, 0.2])  # steps 0, 2, 4
    summary = trainer.train(lambda: {"ndcg@10": next(scores)}, validate_every=2, keep_best=True)
    assert summary["best_step"] == 0 and trainer.model.encoder.layer[5].output.dense.weight.equal(start)


def test_fewer_examples_than_a_batch_train_as_one_batch(tmp_path):
    ds = _planted()
    trainer = ContrastiveTrainer(TrainConfig(batch_size=100_000, epochs=3, max_length=16), ds, ds, tmp_path / "small")
    assert len(trainer.pairs) < 100_000 and trainer.total_steps == 3
    assert len(next(trainer.batches())) == len(trainer.pairs)
    assert trainer.train()["steps"] == 3
    empty = ds.subset(np.zeros(len(ds.users), bool))
    with pytest.raises(ValueError, match="at least 2"):
        ContrastiveTrainer(TrainConfig(), ds, empty, tmp_path / "none")


def test_frozen_layers_do_not_move(tmp_path):
    ds = _planted()
    trainer = ContrastiveTrainer(
        TrainConfig(batch_size=16, max_steps=2, freeze_layers=5, max_length=16), ds, ds, tmp_path / "frozen"
    )
    frozen = trainer.model.encoder.layer[4].output.dense.weight.detach().clone()
    trained = trainer.model.encoder.layer[5].output.dense.weight.detach().clone()
    trainer.train()
    assert trainer.model.encoder.layer[4].output.dense.weight.equal(frozen)
    assert not trainer.model.encoder.layer[5].output.dense.weight.equal(trained)
    assert not any(p.requires_grad for p in trainer.model.embeddings.parameters())
    with pytest.raises(ValueError, match="freeze all 6"):
        ContrastiveTrainer(TrainConfig(freeze_layers=6), ds, ds, tmp_path / "all")


def test_trained_checkpoint_serves(ray_cluster, server_thread_factory, tmp_path):
    ds = _planted()
    ContrastiveTrainer(TrainConfig(batch_size=16, max_steps=2, max_length=16), ds, ds, tmp_path / "ckpt").train()
    config = make_config(tmp_path / "data", workers={"replicas": 1}, model={"path": str(tmp_path / "ckpt")})
    server = server_thread_factory(config)
    client = Client(server.target, timeout_s=120)
    try:
        server.wait_ready(client)
        assert client.info().model == "ckpt"
        client.upsert_items(ds.items)
        results = list(client.recommend(history=[1, 5], k=5))
        assert len(results) == 5
    finally:
        client.close()
        server.stop()


def test_ray_train_data_parallel_two_cpu_workers(ray_cluster, tmp_path):
    from bertrec.training.distributed import train_distributed

    ds = _planted()
    config = TrainConfig(batch_size=8, max_steps=3, max_length=16, lr=1e-4)
    metrics = train_distributed(config, ds, ds, tmp_path / "ddp", num_workers=2, cpus_per_worker=0.5)
    assert metrics["steps"] == 3
    record = json.loads((tmp_path / "ddp" / CONFIG_FILE).read_text())
    assert record["summary"]["steps"] == 3
    assert (tmp_path / "ddp" / "model.safetensors").exists()
