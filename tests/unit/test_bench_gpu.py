"""bench/gpu.py without a GPU: it runs nothing and writes nothing; its GPU-vs-CPU tables and plot
work on result files of the shapes the CPU benchmarks write."""

from __future__ import annotations

import argparse

import pytest

from bench import gpu


def test_without_a_cuda_gpu_nothing_runs(monkeypatch, capsys):
    monkeypatch.setattr(gpu, "cuda_info", lambda: None)

    def no_writes(*_args, **_kwargs):
        raise AssertionError("wrote results without a GPU")

    monkeypatch.setattr(gpu, "write_results", no_writes)
    assert gpu.main([]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "no CUDA GPU" in out[0]


def test_cpu_figures_compared_with_themselves(tmp_path, capsys):
    cpu = gpu.cpu_results(quick=False)
    if not all(cpu.values()):
        pytest.skip("bench/results/ lacks a CPU result file")
    rows = (
        gpu.encode_figures(cpu["encode"][0][1], cpu["encode"])
        + gpu.index_figures(cpu["index"][0][1], cpu["index"])
        + gpu.recommend_figures(cpu["recommend"][0][1], cpu["recommend"][:1])
    )
    assert {r["section"] for r in rows} == {"encode", "index", "recommend"}
    assert sum(r["section"] == "encode" for r in rows) == 3 * 7  # 3 lengths: in-process, 6 service figures
    assert all(r["speedup"] == pytest.approx(1.0) for r in rows if r["speedup"] is not None)
    gpu.print_table(rows)
    assert "GPU better by" in capsys.readouterr().out
    gpu.plot(rows, "test", tmp_path / "gpu.png")
    assert (tmp_path / "gpu.png").stat().st_size > 0


def test_recommend_step_gives_run_size_every_setting_the_recommend_benchmark_has(tmp_path):
    # run_size reads its command-line namespace; the GPU run builds its own and must lack nothing.
    from bench import recommend

    wanted = set(vars(recommend.build_parser().parse_args([]))) - {"quick", "out"}
    args = argparse.Namespace(recommend_sizes=[5000], quick=False, rounds=2)
    settings = vars(gpu.recommend_settings(args, gpus=1, log=tmp_path / "server.log"))
    assert wanted <= set(settings), f"missing: {sorted(wanted - set(settings))}"
    assert settings["rounds"] == 2 and settings["replicas"] == [1] and settings["use_gpu"] == "auto"
