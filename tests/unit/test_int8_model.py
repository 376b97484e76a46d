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


def test_calibration_file_reads_texts_and_refuses_unusable_files(tmp_path):
    from bertrec.config import load_config

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join([" A red kettle, 1.7 l ", "", *[f"Item {i}" for i in range(600)]]) + "\n")
    read = int8_model.read_calibration_file(str(texts))
    assert read[0] == "A red kettle, 1.7 l" and len(read) == int8_model.MAX_CALIBRATION_TEXTS
    assert load_config(environ={"BERTREC_MODEL_INT8_CALIBRATION": str(texts)}).model.int8_calibration == str(texts)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    for bad, why in ((tmp_path / "missing.txt", "cannot read"), (blank, "has no text")):
        with pytest.raises(ValueError, match=why):
            load_config(environ={"BERTREC_MODEL_INT8_CALIBRATION": str(bad)})


def test_encoder_calibrated_on_a_users_texts(tmp_path):
    """int8 calibrated on the caller's own texts: another model (and vector format) than the
    built-in calibration, still close to fp32."""
    import numpy as np

    from bertrec.workers.encoder import BertEncoder
    from bertrec.workers.pool import vector_format

    texts = tmp_path / "catalogue.txt"
    titles = [t for t in int8_model.calibration_texts() if len(t) < 60][:64]
    texts.write_text("\n".join(reversed(titles)) + "\n")
    custom = BertEncoder("", "cpu", quantize="int8", int8_calibration=str(texts))
    builtin = BertEncoder("", "cpu", quantize="int8")
    assert custom.calibration == int8_model.calibration_digest(list(reversed(titles)))
    assert builtin.calibration == ""
    assert vector_format("int8", custom.runtime, custom.calibration) == f"int8-static-{custom.calibration}"
    sample = ["Heat (1995)", "Toy Story (1995)", "Alien (1979)"]
    fp32 = BertEncoder("", "cpu").encode_items(sample)
    assert np.sum(custom.encode_items(sample) * fp32, axis=1).min() >= 0.98
