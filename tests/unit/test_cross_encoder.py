"""The cross-encoder's pure parts with a tiny randomly initialised BERT (the packaged tokenizer, no
pretrained weights): pair building, the cascade's score mix, the mix choice, training, save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bertrec.rerank.cross_encoder import (
    MIXES,
    CascadeReranker,
    CrossEncoder,
    CrossEncoderTraining,
    choose_mix,
    history_text,
    pair_ids,
    train_cross_encoder,
)
from bertrec.rerank.features import SCALAR_FEATURES
from bertrec.rerank.loading import load_reranker
from bertrec.rerank.model import CARD, FusionReranker
from bertrec.rerank.training import CandidateLists
from bertrec.workers.encoder import default_model_path


def tiny_cross_encoder(**settings) -> CrossEncoder:
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=160,
    )
    return CrossEncoder(BertModel(config), tokenizer, **settings)


def test_history_text_is_the_latest_titles_most_recent_first():
    assert history_text(["Heat (1995)", "Up (2009)", "Jaws (1975)"], 2) == "Jaws (1975) ; Up (2009)"
    assert history_text(["Heat (1995)"], 10) == "Heat (1995)" and history_text(["Heat (1995)"], 0) == ""


def test_pairs_cut_the_history_first_and_keep_half_for_the_item():
    history, item = pair_ids(list(range(100)), [7, 8, 9], max_length=32)
    assert item == [7, 8, 9] and history == list(range(26))  # 32 - 3 special tokens - 3 item tokens
    history, item = pair_ids(list(range(100)), list(range(100)), max_length=32)
    assert len(item) == 14 and len(history) == 15  # the item keeps half of the 29 left, the history the rest
    assert pair_ids([1, 2], list(range(100)), max_length=32) == ([1, 2], list(range(27)))


def test_encoded_pairs_match_the_tokenizers_own_pair_encoding():
    model = tiny_cross_encoder(max_length=24)
    batch = model.encode_pairs(["Heat (1995) ; Toy Story (1995)", "Up"], ["Sabrina (1995)", "Jumanji (1995)"])
    expected = model.tokenizer("Heat (1995) ; Toy Story (1995)", "Sabrina (1995)")
    width = len(expected["input_ids"])
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert batch[key][0, :width].tolist() == expected[key]
    assert batch["attention_mask"][1].sum() < width  # the shorter pair is padded
    long = model.encode_pairs(["a b c d e f g h i j k l m n o p q r s t u v w x y z"], ["x y z"])
    assert long["input_ids"].shape[1] == 24


def _fusion_and_model(top_n: int = 3, weights=(1.0, 0.0)) -> CascadeReranker:
    return CascadeReranker(FusionReranker(dim=8), tiny_cross_encoder(max_length=32), top_n, weights)


def test_cascade_puts_the_rescored_top_n_first_in_the_mix_order():
    first = np.array([0.1, 5.0, 3.0, 4.0, -2.0, 2.9], np.float32)
    cascade = _fusion_and_model(top_n=3, weights=(0.0, 1.0))
    top = cascade.top(first)
    assert top.tolist() == [1, 3, 2]
    final = cascade.combine(first, top, np.array([0.0, 1.0, 2.0], np.float32))  # reverses the top 3
    assert np.argsort(-final).tolist() == [2, 3, 1, 5, 0, 4]
    fusion_only = _fusion_and_model(top_n=3, weights=(1.0, 0.0))
    assert np.argsort(-fusion_only.combine(first, top, np.array([0.0, 1.0, 2.0]))).tolist() == [1, 3, 2, 5, 0, 4]
    assert cascade.top(first, 2).tolist() == [1, 3]  # serving may ask for another N than trained with


def _lists(n_lists: int = 8, width: int = 6) -> tuple[CandidateLists, list[str]]:
    """Column 0 is the positive text "good film", the others "bad film"; the history says "good"."""
    texts = ["good film"] + [f"bad film {c}" for c in range(1, width)] + ["good old days"]
    cols = np.tile(np.arange(width), (n_lists, 1))
    for row in cols:
        np.random.default_rng(int(row[0])).shuffle(row)
    labels = (cols == 0).astype(np.float32)
    scalars = np.zeros((n_lists, width, len(SCALAR_FEATURES)), np.float32)
    users = np.zeros((n_lists, 8), np.float32)
    mask = np.ones((n_lists, width), bool)
    histories = [np.array([width])] * n_lists
    return CandidateLists(scalars, cols, users, labels, mask, ["warm"] * n_lists, histories), texts


def test_training_lowers_the_listwise_loss():
    lists, texts = _lists()
    model = tiny_cross_encoder(max_length=32)
    config = CrossEncoderTraining(steps=40, lists_per_step=4, negatives=3, freeze_layers=1, lr=2e-3, head_lr=1e-2)
    summary = train_cross_encoder(model, lists, texts, config)
    assert summary["loss_last"] < 0.5 * summary["loss_first"], summary["losses"]
    scores = model.score("good old days", ["good film", "bad film 1", "bad film 2"])
    assert scores.argmax() == 0
    frozen = model.encoder.encoder.layer[0].attention.self.query.weight
    assert not frozen.requires_grad


class _Oracle:
    """A stand-in cross-encoder that knows the answer (or knows nothing)."""

    def __init__(self, useful: bool):
        self.useful = useful

    def score_pairs(self, histories, items, batch_pairs=64):
        return np.array([float(self.useful and t == "good film") for t in items], np.float32)


def test_mix_follows_a_useful_cross_encoder_and_ignores_a_useless_one():
    lists, texts = _lists()
    first = np.where(lists.cols == 0, 0.0, 1.0).astype(np.float32)  # the fusion order puts the positive last
    config = CrossEncoderTraining(top_n=6)
    weights, summary = choose_mix(_Oracle(useful=True), lists, texts, first, config)
    assert weights[1] > 0 and summary["lists"] == 8
    assert summary["ndcg@10_in_top_n"]["fusion 0 + cross-encoder 1"] == 1.0
    perfect = 1.0 - first  # now the fusion order is right: constant cross-encoder scores add nothing
    weights, _ = choose_mix(_Oracle(useful=False), lists, texts, perfect, config)
    assert weights == MIXES[0]


def test_saved_folder_loads_by_kind_and_scores_the_same(tmp_path):
    cascade = _fusion_and_model(top_n=4, weights=(1.0, 0.5))
    with torch.no_grad():
        cascade.cross_encoder.head.bias.fill_(0.25)
    items = ["good film", "bad film 1", "Heat (1995)"]
    before = cascade.cross_encoder.score("Heat (1995) ; Up (2009)", items)
    card = cascade.save(tmp_path / "ce", {"encoder": "test", "first_stage": {"encoder": "test", "ease_l2": 1.0}})
    assert card["kind"] == "cross-encoder" and card["top_n"] == 4
    loaded = load_reranker(tmp_path / "ce")
    assert loaded.kind == "cross-encoder" and loaded.fusion_card["ease_l2"] == 1.0 and loaded.fusion_card["dim"] == 8
    assert loaded.cascade.weights == (1.0, 0.5) and loaded.cascade.top_n == 4
    np.testing.assert_allclose(loaded.cascade.cross_encoder.score("Heat (1995) ; Up (2009)", items), before, atol=1e-6)
    fusion = load_reranker(tmp_path / "ce" / "fusion")
    assert fusion.kind == "fusion" and fusion.cascade is None and fusion.card["encoder"] == "test"

    card_path = tmp_path / "ce" / CARD
    card_path.write_text(json.dumps({**json.loads(card_path.read_text()), "kind": "llm"}))
    with pytest.raises(ValueError, match="unknown re-ranker kind"):
        load_reranker(tmp_path / "ce")
    with pytest.raises(FileNotFoundError):
        load_reranker(tmp_path / "missing")
