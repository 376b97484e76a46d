"""The calibrated int8 model (workers/int8_model.py): made once per export and calibration set,
reused after, never left half-written; the built-in calibration set covers short and long texts."""

from __future__ import annotations

import os

import pytest

from bertrec.workers import int8_model
from bertrec.workers.encoder import default_model_path
from bertrec.workers.onnx_model import exported_model

TEXTS = ["Heat (1995)", "Toy Story (1995). Animation, Children", "Alien (1979). Horror, Sci-Fi. space; creature"] * 6


@pytest.fixture()
def export(tmp_path):
    """The packaged model's ONNX export (from the shared cache) linked into a fresh folder."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    cached = exported_model(default_model_path(), list(tokenizer("a").keys()))
    linked = tmp_path / cached.name
    os.symlink(cached, linked)
    return linked, tokenizer


def test_made_once_then_reused(export, monkeypatch):
    onnx_path, tokenizer = export
    xml = int8_model.quantized_model(onnx_path, tokenizer, 128, TEXTS)
    assert xml.exists() and xml.with_suffix(".bin").stat().st_size > 1_000_000
    assert xml.parent == onnx_path.parent

    def no_quantize(*args, **kwargs):
        raise AssertionError("quantized again")

    monkeypatch.setattr(int8_model, "_quantize", no_quantize)
    assert int8_model.quantized_model(onnx_path, tokenizer, 128, TEXTS) == xml
    other = int8_model.quantized_key(onnx_path, TEXTS[:3], 128)  # another calibration set: another model
    assert other != xml.stem


def test_failed_quantization_leaves_nothing(export, monkeypatch):
    import nncf

    onnx_path, tokenizer = export

    def broken(*args, **kwargs):
        raise RuntimeError("calibration failed")

    monkeypatch.setattr(nncf, "quantize", broken)
    with pytest.raises(RuntimeError, match="calibration failed"):
        int8_model.quantized_model(onnx_path, tokenizer, 128, TEXTS)
    assert not list(onnx_path.parent.glob("*.xml")) and not list(onnx_path.parent.glob("*.bin"))


def test_builtin_calibration_set_spans_short_and_long_texts():
    from transformers import AutoTokenizer

    texts = int8_model.calibration_texts()
    assert texts == int8_model.calibration_texts()  # deterministic: part of the cache key
    lengths = sorted(len(ids) for ids in AutoTokenizer.from_pretrained(default_model_path())(texts)["input_ids"])
    assert len(texts) >= 150
    assert lengths[len(lengths) // 4] <= 12 and lengths[-1] >= 100  # titles and near-cap texts
    batches = int8_model.calibration_batches(AutoTokenizer.from_pretrained(default_model_path()), texts, 128)
    assert sum(len(b["input_ids"]) for b in batches) == len(texts)
    assert all(b["input_ids"].shape[1] <= 128 for b in batches)
