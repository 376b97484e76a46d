"""fp32 CPU replicas on ONNX Runtime: the same vectors as torch, one export per checkpoint, cached."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from bertrec.config import load_config
from bertrec.workers import int8_model, onnx_model
from bertrec.workers.encoder import BertEncoder, default_model_path, resolve_runtime


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def encoders(cache) -> tuple[BertEncoder, BertEncoder]:
    """(ONNX Runtime, torch) encoders of the packaged model; the first export goes to `cache`."""
    onnx = BertEncoder(default_model_path(), "cpu", runtime="onnx", onnx_cache_dir=str(cache))
    return onnx, BertEncoder(default_model_path(), "cpu", runtime="torch")


def texts() -> list[str]:
    """Real titles and longer texts (padding within calls), an empty text, one of 300 words (cut)."""
    from bertrec.movielens import bundled_path, read_movies

    titles = [m.text for m in read_movies(bundled_path())]
    picked = [titles[i] for i in np.random.default_rng(1).choice(len(titles), 40, replace=False)]
    longer = [" ".join(picked[i : i + 6]) for i in range(0, 36, 6)]
    return picked + longer + ["", " ".join(["word"] * 300)]


def test_onnx_vectors_match_torch_across_batch_shapes(encoders):
    onnx, torch_encoder = encoders
    assert (onnx.runtime, torch_encoder.runtime) == ("onnx", "torch")
    assert onnx.model is None  # no torch copy of the weights is kept beside the session
    sample = texts()
    onnx.max_batch_tokens = torch_encoder.max_batch_tokens = 256  # several calls of other shapes than the export's
    a, b = onnx.encode_items(sample), torch_encoder.encode_items(sample)
    assert onnx.stats.calls >= 3
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    assert np.sum(a * b, axis=1).min() >= 0.99999
    assert np.abs(a - b).max() < 1e-4
    # A text's vector does not depend on what it was batched with.
    np.testing.assert_allclose(onnx.encode_items(sample[:1]), a[:1], atol=1e-5)
    assert onnx.dim == 384 and onnx.health()["runtime"] == "onnx"


def test_export_is_cached_and_reused(encoders, cache, monkeypatch):
    assert len(list(cache.glob("*.onnx"))) == 1

    def no_export(*args):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_model, "_export", no_export)
    again = BertEncoder(default_model_path(), "cpu", runtime="onnx", onnx_cache_dir=str(cache))
    np.testing.assert_allclose(again.encode_items(["Heat (1995)"]), encoders[0].encode_items(["Heat (1995)"]))


def test_sessions_leave_out_the_skip_layer_norm_fusion(encoders, cache, tmp_path, monkeypatch):
    """ORT accepts unknown names in disabled_optimizers silently: check on the optimised graph
    that the name is one ORT knows and that the fusion (slower here, BENCHMARKS.md) is gone."""
    import onnx

    graph = next(cache.glob("*.onnx"))

    def fused_ops(path) -> set[str]:
        return {node.op_type for node in onnx.load(str(path)).graph.node}

    onnx_model.onnx_session(graph, 1, str(tmp_path / "ours.onnx"))
    assert "SkipLayerNormalization" not in fused_ops(tmp_path / "ours.onnx")
    assert "LayerNormalization" in fused_ops(tmp_path / "ours.onnx")
    monkeypatch.setattr(onnx_model, "DISABLED_ORT_FUSIONS", [])
    onnx_model.onnx_session(graph, 1, str(tmp_path / "default.onnx"))
    assert "SkipLayerNormalization" in fused_ops(tmp_path / "default.onnx")


def test_changed_checkpoint_files_change_the_export_key(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    first = onnx_model.export_key(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    assert onnx_model.export_key(str(tmp_path)) != first


def test_replicas_starting_together_export_once(tmp_path, monkeypatch):
    exports = []

    def slow_export(model_path, input_names, target):
        exports.append(model_path)
        time.sleep(0.3)
        target.write_bytes(b"graph")

    monkeypatch.setattr(onnx_model, "_export", slow_export)
    results = []
    threads = [
        threading.Thread(
            target=lambda: results.append(onnx_model.exported_model(default_model_path(), ["x"], tmp_path))
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(exports) == 1 and len(set(results)) == 1 and results[0].read_bytes() == b"graph"


def test_failed_export_leaves_no_model_behind(tmp_path, monkeypatch):
    import torch

    class HalfWritten:
        def save(self, path):
            open(path, "wb").write(b"partial")
            raise OSError("disk full")

    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: HalfWritten())
    with pytest.raises(OSError, match="disk full"):
        onnx_model.exported_model(default_model_path(), ["input_ids", "attention_mask"], tmp_path)
    assert not list(tmp_path.glob("*.onnx"))  # the next start exports afresh instead of loading half a file


def test_runtime_resolution(monkeypatch, caplog):
    assert resolve_runtime("auto", "cpu", "none") == "onnx"
    assert resolve_runtime("auto", "cpu", "bf16") == "openvino"
    assert resolve_runtime("auto", "cpu", "int8") == "openvino"  # calibrated int8 (NNCF)
    assert resolve_runtime("torch", "cpu", "int8") == "torch"  # torch's dynamic int8
    assert resolve_runtime("torch", "cpu", "none") == "torch"
    assert resolve_runtime("openvino", "cpu", "none") == "openvino"
    assert resolve_runtime("auto", "cuda", "none") == "torch"  # GPU replicas: fp16 torch
    with caplog.at_level("WARNING"):
        assert resolve_runtime("onnx", "cpu", "int8") == "torch"
        assert resolve_runtime("openvino", "cuda", "none") == "torch"
    assert "runtime=onnx does not run cpu-int8 replicas" in caplog.text
    monkeypatch.setattr(int8_model, "nncf_available", lambda: False)
    assert resolve_runtime("auto", "cpu", "int8") == "torch"
    assert resolve_runtime("auto", "cpu", "bf16") == "openvino"  # bf16 needs no NNCF
    with pytest.raises(ValueError, match="needs openvino onnx onnxscript nncf"):
        resolve_runtime("openvino", "cpu", "int8")
    monkeypatch.setattr(onnx_model, "onnx_available", lambda: False)
    monkeypatch.setattr(onnx_model, "openvino_available", lambda: False)
    assert resolve_runtime("auto", "cpu", "none") == resolve_runtime("auto", "cpu", "bf16") == "torch"
    with pytest.raises(ValueError, match="needs onnxruntime"):
        resolve_runtime("onnx", "cpu", "none")
    with pytest.raises(ValueError, match="needs openvino"):
        resolve_runtime("openvino", "cpu", "bf16")
    with pytest.raises(ValueError, match="runtime"):
        BertEncoder("", "cpu", runtime="tensorrt")


def test_runtime_setting_reaches_replicas_and_shared_pools_compare_it():
    from bertrec.cli import build_parser
    from bertrec.config import ModelConfig, WorkersConfig
    from bertrec.workers.replica import replica_settings

    assert load_config(environ={}).model.runtime == "auto"
    assert load_config(environ={"BERTREC_MODEL_RUNTIME": "torch"}).model.runtime == "torch"
    assert build_parser().parse_args(["serve", "--runtime", "onnx"]).runtime == "onnx"
    settings = replica_settings(ModelConfig(runtime="torch", onnx_cache_dir="/somewhere"), WorkersConfig(), "")
    assert settings["runtime"] == "torch" and "onnx_cache_dir" not in settings  # a node-local path


def test_openvino_fp32_matches_torch(encoders, cache):
    onnx, torch_encoder = encoders
    openvino = BertEncoder(default_model_path(), "cpu", runtime="openvino", onnx_cache_dir=str(cache))
    assert openvino.runtime == "openvino" and openvino.quantize == "none"
    sample = texts()
    a, b = openvino.encode_items(sample), torch_encoder.encode_items(sample)
    assert np.sum(a * b, axis=1).min() >= 0.99999


@pytest.mark.skipif(
    "not __import__('bertrec.workers.encoder', fromlist=['x']).cpu_has_native_bf16()",
    reason="this CPU has no native bf16 (AVX512-BF16 / AMX); bf16 falls back to fp32",
)
def test_bf16_replicas_run_on_openvino_close_to_fp32(encoders, cache):
    bf16 = BertEncoder(default_model_path(), "cpu", quantize="bf16", onnx_cache_dir=str(cache))
    assert (bf16.runtime, bf16.device_label, bf16.model) == ("openvino", "cpu-bf16", None)
    assert len(list(cache.glob("*.onnx"))) == 1  # the same export as fp32
    sample = texts()
    cosine = np.sum(bf16.encode_items(sample) * encoders[1].encode_items(sample), axis=1)
    # Measured: mean 0.99997 on titles. bf16 arithmetic, not a changed model.
    assert cosine.mean() >= 0.999 and cosine.min() >= 0.998


def test_auto_falls_back_to_torch_when_the_export_fails(tmp_path, monkeypatch, caplog):
    def unsupported(*args):
        raise RuntimeError("operator not supported")

    monkeypatch.setattr(onnx_model, "_export", unsupported)
    with caplog.at_level("WARNING"):
        encoder = BertEncoder(default_model_path(), "cpu", onnx_cache_dir=str(tmp_path))
    assert encoder.runtime == "torch" and encoder.model is not None
    assert "operator not supported" in caplog.text and encoder.encode_items(["Heat (1995)"]).shape == (1, 384)
    with pytest.raises(RuntimeError, match="operator not supported"):  # asked for by name: no silent fallback
        BertEncoder(default_model_path(), "cpu", runtime="onnx", onnx_cache_dir=str(tmp_path))


def test_least_recently_used_exports_are_pruned(tmp_path):
    now = time.time()
    for i in range(5):
        (tmp_path / f"m{i}.onnx").write_bytes(b"graph")
        (tmp_path / f"m{i}.onnx.lock").write_text("")
        os.utime(tmp_path / f"m{i}.onnx", (now - 7200 + i, now - 7200 + i))  # m4 the most recent
    os.utime(tmp_path / "m0.onnx")  # just used
    removed = onnx_model.prune_exports(tmp_path, keep=2, older_than_s=3600)
    assert sorted(f.name for f in removed) == ["m1.onnx", "m2.onnx", "m3.onnx"]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["m0.onnx", "m0.onnx.lock", "m4.onnx", "m4.onnx.lock"]
    assert onnx_model.prune_exports(tmp_path, keep=0, older_than_s=3600) == [tmp_path / "m4.onnx"]  # m0 is fresh
