"""bench/gpu.py rehearsed on the CPU. Its index and recommend steps run through `main --quick` with
the GPU settings (`use_gpu auto`) falling back to CPU indexes; the encode step runs with device
"cpu" in place of "cuda". Everything but the GPU itself runs: the real benchmarks at the --quick
sizes, served bertrecs, the gRPC floor, the comparison and the plot. A GPU session is short: the
script must not first meet its own wiring there."""

from __future__ import annotations

import argparse
import json

import faiss
import pytest
import torch

from bench import common, gpu

pytestmark = pytest.mark.integration


def test_index_and_recommend_steps_run_end_to_end(tmp_path, monkeypatch, capsys):
    info = {
        "name": "rehearsal on the CPU",
        "count": 1,
        "devices": [],
        "driver": None,
        "cuda_driver": None,
        "cuda_torch": None,
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "faiss_gpus": 0,
    }
    monkeypatch.setattr(gpu, "cuda_info", lambda: info)
    monkeypatch.setattr(gpu, "RESULTS", tmp_path)  # the server log, and no CPU result files to read
    monkeypatch.setattr(common, "RESULTS", tmp_path)  # where write_results puts gpu-quick.json

    assert gpu.main(["--quick", "--steps", "index,recommend"]) == 0

    result = json.loads((tmp_path / "gpu-quick.json").read_text())
    assert "encode" not in result and result["gpu"]["name"] == info["name"]
    (index_size,) = result["index"]["sizes"]
    assert index_size["items"] == 20_000 and index_size["exact"]["qps_batch1"] > 0
    (recommend_size,) = result["recommend"]["sizes"]
    assert recommend_size["items"] == 5_000
    runs = recommend_size["runs"]
    assert [r["concurrency"] for r in runs] == [1, 8, 32] and all(r["replicas"] == 1 for r in runs)
    assert all(r["requests"] == 200 and r["p99_ms"] > 0 and r["grpc_floor"]["e2e_mean_ms"] > 0 for r in runs)
    assert "gRPC floor" in capsys.readouterr().out

    # Against CPU files of the same shapes (here: its own figures), every comparison row is made.
    rows = gpu.index_figures(result["index"], [("self", result["index"])])
    rows += gpu.recommend_figures(result["recommend"], [("self", result["recommend"])])
    assert rows and all(row["speedup"] == pytest.approx(1.0) for row in rows if row["speedup"] is not None)
    gpu.plot(rows, "rehearsal", tmp_path / "comparison.png")
    gpu.print_table(rows)
    assert (tmp_path / "comparison.png").stat().st_size > 0


def test_encode_step_runs_end_to_end_on_the_cpu(tmp_path):
    # The step's GPU run with device "cpu": the served replicas and both in-process baselines on
    # this machine in fp32, the --quick texts, one round.
    args = argparse.Namespace(quick=True, rounds=3)
    step = gpu.encode_step(args, gpus=1, log=tmp_path / "server.log", device="cpu")
    assert step["setup"]["rounds"] == 1 and "--device cpu" in step["setup"]["service"]
    rows = gpu.encode_figures(step, [("self", step)])
    assert {length for length in step["summary"]} == {"short", "medium", "long"}
    assert all(row["gpu"] > 0 and row["speedup"] == pytest.approx(1.0) for row in rows)
    assert len(rows) == 3 * (1 + 2 * 3)  # per length: in-process, and 1 / 8 / 32 callers x 1 / 16 texts
