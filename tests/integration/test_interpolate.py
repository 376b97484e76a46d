"""Weight interpolation between a start and a checkpoint fine-tuned from it (WiSE-FT): the written
checkpoint holds start + alpha * (tuned - start), loads in the service's encoder, and carries no
validation figures of the tuned weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModel, BertConfig, BertModel

from bertrec.cli import main
from bertrec.server.state import compare_evaluations
from bertrec.server.users import USER_TOWER_FILE
from bertrec.training.interpolate import interpolate_checkpoints
from bertrec.training.trainer import CONFIG_FILE, ContrastiveTrainer, TrainConfig
from bertrec.workers.encoder import BertEncoder, default_model_path
from tests.integration.test_training import _planted

pytestmark = pytest.mark.integration

LAYER = "encoder.layer.5.output.dense.weight"


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A pooled-tower checkpoint a few steps from the packaged model, with a stored validation."""
    ds = _planted()
    out = tmp_path_factory.mktemp("tuned")
    config = TrainConfig(batch_size=8, max_steps=3, lr=1e-3, max_length=16, user_tower="pooled")
    ContrastiveTrainer(config, ds, ds, out).train(lambda: {"ndcg@10": 0.3, "recall@20": 0.5})
    return out


def _weights(path) -> dict:
    return AutoModel.from_pretrained(path).state_dict()


def test_alpha_gives_the_start_the_tuned_weights_or_between(tuned, tmp_path):
    start, end = _weights(default_model_path()), _weights(tuned)
    assert not start[LAYER].equal(end[LAYER])
    for alpha in (0.0, 0.5, 1.0):
        out = interpolate_checkpoints("", str(tuned), alpha, tmp_path / f"a{alpha}")
        mixed = _weights(out)
        for name in (LAYER, "embeddings.word_embeddings.weight"):
            assert torch.allclose(mixed[name], start[name] + alpha * (end[name] - start[name]), atol=1e-6)
        tower = np.load(out / USER_TOWER_FILE)  # the packaged start has no tower: it counts as zero
        assert np.allclose(tower, alpha * np.load(tuned / USER_TOWER_FILE))


def test_interpolated_checkpoint_encodes_and_is_unevaluated(tuned, tmp_path):
    out = interpolate_checkpoints("", str(tuned), 0.5, tmp_path / "half")
    titles = ["Toy Story (1995)", "Heat (1995)"]
    start, end, half = (BertEncoder(str(p), "cpu").encode_items(titles) for p in (default_model_path(), tuned, out))
    assert half.shape == (2, 384)
    assert not np.allclose(half, end) and not np.allclose(half, start)
    record = json.loads((out / CONFIG_FILE).read_text())
    assert record["interpolation"] == {"start": "packaged MiniLM", "tuned": str(tuned), "alpha": 0.5}
    assert record["summary"]["validation"] == {} and record["config"]["user_tower"] == "pooled"
    assert "WiSE-FT" in (out / "README.md").read_text()
    # The tuned weights' validation figure no longer describes these weights: the swap gate asks for --force.
    assert "no stored evaluation" in compare_evaluations(tuned, out)


def test_bad_alpha_and_other_architectures_are_refused(tuned, tmp_path):
    with pytest.raises(ValueError, match="alpha"):
        interpolate_checkpoints("", str(tuned), 1.5, tmp_path / "bad")
    small = tmp_path / "small"
    tiny = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertModel(tiny).save_pretrained(small)
    with pytest.raises(ValueError, match="same architecture"):
        interpolate_checkpoints("", str(small), 0.5, tmp_path / "mismatch")


def test_cli_interpolates(tuned, tmp_path, capsys):
    assert main(["interpolate", str(tuned), "--alpha", "0.25", "--out", str(tmp_path / "q")]) == 0
    assert "checkpoint:" in capsys.readouterr().out
    assert json.loads((tmp_path / "q" / CONFIG_FILE).read_text())["interpolation"]["alpha"] == 0.25
    with pytest.raises(SystemExit):
        main(["interpolate", str(tuned), "--alpha", "2", "--out", str(tmp_path / "r")])
