"""GPU benchmark: the encode / index / recommend figures on a CUDA machine, against the CPU figures.

    python bench/gpu.py [--rounds 3] [--index-sizes 1000000] [--recommend-sizes 100000,1000000]
                        [--steps encode,index,recommend] [--quick]

Runs only where torch sees a CUDA GPU. Without one it prints one line saying so and exits 0
having run nothing and written nothing.

1. encode (bench/encode.py's measurement): `bertrec serve --no-demo --device cuda` with one
   replica per GPU (on CUDA the encoder loads fp16 weights, whatever `--quantize` says) vs
   in-process sentence-transformers on cuda, also fp16 (`model.half()`, so both sides run the
   same weights), batch 64, on the same MovieLens texts (titles, ~60 and ~120 tokens), 1 / 8 / 32
   callers sending 1 or 16 texts per request, in alternating rounds (`--rounds`).
2. index (bench/index.py's `run_size`) at `--index-sizes` with `use_gpu auto`: every FaissIndex
   is moved to the GPUs (fp16 storage) and the raw exact baseline is moved there too; HNSW has no
   GPU implementation and stays on the CPU. Exact vs IVF vs HNSW vs IVF-PQ, recall@10 and QPS at
   batch 1 and 64, 500 queries (as the CPU figure at 1M), 2 timed rounds of 0.3 s per setting.
3. recommend (bench/recommend.py's `run_size`) at `--recommend-sizes`: the served `Flat` index on
   the GPUs (`index.use_gpu auto`), GPU encoder replicas, concurrency 1 / 8 / 32, 600 requests per
   level and round, `--rounds` rounds, 300 users; its in-process baseline searches a FaissIndex on
   the GPUs too, and its gRPC floor (bench/grpc_floor.py) runs beside it as on the CPU.

The CPU figures are read from bench/results/ as they are (encode.json; index-1m.json, index.json;
recommend.json and recommend-hnsw32.json; with --quick the *-quick.json files first), and each GPU
figure is set beside the CPU one of the same name and catalogue size. Writes bench/results/gpu.json
and gpu.png (GPU vs CPU per figure) and prints a table; records the date, the GPU(s), the driver
and CUDA versions and how many GPUs faiss sees. The full run is estimated (not yet measured) at
6-8 minutes on one H200. `--quick` (gpu-quick.*) is a smoke run of the same shape: fewer texts and
one round, a 20k-item index and a 5k-item catalogue (estimated at about 2 minutes). `--steps` runs
a subset (the other steps' figures in the result file are kept from its last run on the same GPU).
bench/index.py's real title vectors come from bench/results/cache/ (encoded on the CPU when absent).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import index as index_bench  # noqa: E402
from bench import recommend as recommend_bench  # noqa: E402
from bench.common import RESULTS, write_results  # noqa: E402
from bench.encode import (  # noqa: E402
    BATCH,
    QUICK_TEXTS,
    TEXTS,
    Server,
    measure_texts,
    measurement_texts,
    service_rate,
    summarise,
)

STEPS = ("encode", "index", "recommend")
CPU_FILES = {  # the CPU result files of each step, preferred first
    "encode": ("encode.json",),
    "index": ("index-1m.json", "index.json"),
    "recommend": ("recommend.json", "recommend-hnsw32.json"),
}


# ---------------------------------------------------------------- the machine


def cuda_info() -> dict | None:
    """The GPU(s), driver and versions; None when torch sees no CUDA GPU (or torch is missing)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    from bertrec.workers.device import faiss_gpu_count

    try:
        import faiss

        faiss_version, faiss_gpus = faiss.__version__, faiss_gpu_count()
    except ImportError:
        faiss_version, faiss_gpus = None, 0
    smi = nvidia_smi()
    props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    return {
        "name": torch.cuda.get_device_name(0),
        "count": len(props),
        "devices": [
            {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "capability": f"{p.major}.{p.minor}"}
            for p in props
        ],
        "driver": smi.get("Driver Version"),
        "cuda_driver": smi.get("CUDA Version"),
        "cuda_torch": torch.version.cuda,
        "torch": torch.__version__,
        "faiss": faiss_version,
        "faiss_gpus": faiss_gpus,
    }


def nvidia_smi() -> dict[str, str]:
    """'Driver Version' and 'CUDA Version' from nvidia-smi's header; empty without nvidia-smi."""
    try:
        out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(re.findall(r"(Driver Version|CUDA Version):\s*([\w.]+)", out))


# ---------------------------------------------------------------- the three steps


def encode_step(args, gpus: int, log: Path, device: str = "cuda") -> dict:
    """bench/encode.py's service-vs-in-process measurement, GPU replicas vs in-process fp16 on cuda.
    (`device` "cpu" rehearses the step without a GPU, in fp32: tests only.)"""
    import torch
    from sentence_transformers import SentenceTransformer

    from bertrec.workers.encoder import BertEncoder, default_model_path

    counts = QUICK_TEXTS if args.quick else TEXTS
    rounds = 1 if args.quick else args.rounds
    model = SentenceTransformer(default_model_path(), device=device)
    if device.startswith("cuda"):
        model = model.half()  # as the replicas: fp16 on CUDA
    texts, token_means = measurement_texts(model.tokenizer, counts)
    model.encode(texts["short"][:64])  # warm-up
    same_runtime = BertEncoder(default_model_path(), device)  # the replicas' own encoder (torch fp16 on CUDA)
    same_runtime.encode_items(texts["short"][:64])
    raw: dict = {length: defaultdict(list) for length in texts}
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp) / "gpu", log, gpus, 1, "--device", device)
        try:
            service_rate(server, texts["short"][:32], 8, 1)  # warm-up: the replicas' first calls
            for r in range(rounds):
                for length, batch in texts.items():
                    measure_texts((model, same_runtime), batch, server, (server,), raw[length])
                print(f"encode round {r + 1}/{rounds} done after {time.perf_counter() - began:.0f}s", flush=True)
        finally:
            server.served.stop()
    dtype = str(next(model.parameters()).dtype)
    del model, same_runtime
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {
        "setup": {
            "in_process": f"sentence-transformers encode on {device}, {dtype}, batch_size 64",
            "in_process_same_runtime": f"BertEncoder on {device} (as the replicas), all texts in one call",
            "service": f"bertrec serve --no-demo --device {device} --replicas {gpus}, default batching",
            "texts_per_measurement": counts,
            "rounds": rounds,
            "run_s": time.perf_counter() - began,
        },
        "summary": summarise(raw, token_means),
        "rounds": {length: dict(runs) for length, runs in raw.items()},
    }


def index_step(args, catalogue, movie_ids) -> dict:
    """bench/index.py's measurement with use_gpu auto, at --index-sizes."""
    import faiss

    settings = argparse.Namespace(
        queries=200 if args.quick else args.index_queries,
        rounds=1 if args.quick else 2,
        time_s=0.2 if args.quick else 0.3,
        pool=200,
        pq_m=48,
        train_per_list=40,
        threads=0,
        use_gpu="auto",
    )
    began = time.perf_counter()
    sizes = [index_bench.run_size(n, settings, catalogue, movie_ids) for n in args.index_sizes]
    gc.collect()
    return {
        "faiss": faiss.__version__,
        "faiss_threads": faiss.omp_get_max_threads(),
        "k": index_bench.K,
        "settings": vars(settings),
        "sizes": sizes,
        "target": index_bench.target(sizes[-1]),
        "run_s": time.perf_counter() - began,
    }


def recommend_settings(args, gpus: int, log: Path) -> argparse.Namespace:
    """What bench/recommend.py's `run_size` reads from its command line, for the GPU run."""
    return argparse.Namespace(
        sizes=args.recommend_sizes,
        concurrency=[1, 8, 32],
        requests=200 if args.quick else 600,
        rounds=1 if args.quick else args.rounds,
        replicas=[gpus],  # one replica per GPU: a GPU replica takes a whole GPU
        replica_size=0,
        users=100 if args.quick else 300,
        index="Flat",
        use_gpu="auto",
        log=log,
    )


def recommend_step(args, gpus: int, catalogue, movie_ids, log: Path) -> dict:
    """bench/recommend.py's measurement, the served index and the in-process baseline on the GPUs."""
    from bertrec.movielens import bundled_path, read_movies

    titles = [m.text for m in read_movies(bundled_path())]  # the order real_vectors encoded them in
    settings = recommend_settings(args, gpus, log)
    began = time.perf_counter()
    histories = index_bench.user_histories()
    sizes = [recommend_bench.run_size(n, settings, catalogue, movie_ids, titles, histories) for n in settings.sizes]
    result = {
        "settings": {k: v for k, v in vars(settings).items() if k != "log"},
        "k": recommend_bench.K,
        "sizes": sizes,
    }
    result["target"] = recommend_bench.target(result)
    result["run_s"] = time.perf_counter() - began
    return result


# ---------------------------------------------------------------- GPU vs CPU


def cpu_results(quick: bool) -> dict[str, list[tuple[str, dict]]]:
    """(file name, payload) of each step's CPU result files that exist, preferred first."""
    out: dict[str, list[tuple[str, dict]]] = {}
    for step, names in CPU_FILES.items():
        if quick:
            names = (f"{step}-quick.json", *names)
        out[step] = [(name, json.loads((RESULTS / name).read_text())) for name in names if (RESULTS / name).exists()]
    return out


def figure(section: str, name: str, unit: str, cpu, gpu, source: str, higher_is_better: bool) -> dict:
    """One figure side by side; `speedup` > 1 = the GPU is better (faster, more per second)."""
    speedup = None
    if cpu and gpu:
        speedup = gpu / cpu if higher_is_better else cpu / gpu
    return {
        "section": section,
        "figure": name,
        "unit": unit,
        "cpu": cpu,
        "gpu": gpu,
        "speedup": speedup,
        "cpu_source": source,
    }


def encode_figures(gpu: dict, cpu_files: list[tuple[str, dict]]) -> list[dict]:
    source, cpu = cpu_files[0] if cpu_files else ("(none)", {"summary": {}})
    rows = []
    for length, row in gpu["summary"].items():
        base = cpu["summary"].get(length, {})
        label = f"{length} ({row['mean_tokens']:.0f} tok)"
        mine, theirs = row["in_process_texts_per_s"], base.get("in_process_texts_per_s")
        rows.append(figure("encode", f"{label} in-process", "texts/s", theirs, mine, source, True))
        for key, value in row.items():
            mode, _, callers = key.partition("_")  # single_<callers> / batched_<callers>
            if mode in ("single", "batched") and callers.isdigit():
                per_request = "1 text" if mode == "single" else f"{BATCH} texts"
                name = f"{label} service, {callers} caller(s) x {per_request}"
                theirs = base.get(key, {}).get("texts_per_s")
                rows.append(figure("encode", name, "texts/s", theirs, value["texts_per_s"], source, True))
    return rows


def same_sizes(gpu: dict, cpu_files: list[tuple[str, dict]], first_only: bool):
    """(GPU size, CPU file name, CPU payload, its size of as many items) for each CPU file with that
    size, or only the first such file."""
    for size in gpu["sizes"]:
        found = [(name, cpu, s) for name, cpu in cpu_files for s in cpu["sizes"] if s["items"] == size["items"]]
        for name, cpu, other in found[:1] if first_only else found:
            yield size, name, cpu, other


def index_figures(gpu: dict, cpu_files: list[tuple[str, dict]]) -> list[dict]:
    rows = []
    for size, source, _, other in same_sizes(gpu, cpu_files, first_only=True):
        n = size["items"]
        for b in ("batch1", "batch64"):
            theirs, mine = other["exact"][f"qps_{b}"], size["exact"][f"qps_{b}"]
            rows.append(figure("index", f"{n:,} items exact raw faiss, {b}", "QPS", theirs, mine, source, True))
        for mine in size["cheapest_reaching_target"]:
            key = (mine["index"], mine["mode"])
            theirs = next((c for c in other["cheapest_reaching_target"] if (c["index"], c["mode"]) == key), None)
            g, c = mine["row"], theirs and theirs["row"]
            if g is None and c is None:
                continue  # neither reaches the recall target (or the CPU file lacks this index)
            label = f"{n:,} items {mine['factory']} {mine['mode']}"
            if mine["factory"] != "Flat":
                cheapest = (index_bench.setting(r) if r else "none" for r in (c, g))
                label += " cheapest with recall@10>=0.95 (CPU {}, GPU {})".format(*cheapest)
            for b in ("batch1", "batch64"):
                qps = (r and r[f"qps_{b}"] for r in (c, g))
                rows.append(figure("index", f"{label}, {b}", "QPS", *qps, source, True))
        builds = {r["factory"]: r["build_s"] for r in other["rows"]}
        for factory, build_s in {r["factory"]: r["build_s"] for r in size["rows"]}.items():
            rows.append(
                figure("index", f"{n:,} items build {factory}", "s", builds.get(factory), build_s, source, False)
            )
    return rows


def recommend_figures(gpu: dict, cpu_files: list[tuple[str, dict]]) -> list[dict]:
    rows = []
    mine_replicas, mine_index = gpu["settings"]["replicas"][0], gpu["settings"]["index"]
    for size, source, cpu, other in same_sizes(gpu, cpu_files, first_only=False):
        theirs_replicas, theirs_index = cpu["settings"]["replicas"][0], cpu["settings"]["index"]
        label = f"{size['items']:,} items, CPU {theirs_index} / GPU {mine_index}"
        for run in (r for r in size["runs"] if r["replicas"] == mine_replicas):
            c = run["concurrency"]
            theirs = recommend_bench.run_at(other, theirs_replicas, c) or {}
            for key, unit, higher in (("p50_ms", "ms", False), ("p99_ms", "ms", False), ("rps", "req/s", True)):
                name = f"{label}, concurrency {c}: {key.removesuffix('_ms')}"
                rows.append(figure("recommend", name, unit, theirs.get(key), run[key], source, higher))
        base = (s["in_process"]["p50_ms"] for s in (other, size))
        rows.append(figure("recommend", f"{label}, in-process baseline: p50", "ms", *base, source, False))
    return rows


def fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def print_table(rows: list[dict]) -> None:
    width = max((len(r["figure"]) for r in rows), default=10)
    print(f"\n{'figure':<{width}} {'unit':>7} {'CPU':>10} {'GPU':>10} {'GPU better by':>14}  CPU figure from")
    for r in rows:
        speedup = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        print(
            f"{r['figure']:<{width}} {r['unit']:>7} {fmt(r['cpu']):>10} {fmt(r['gpu']):>10} {speedup:>14}  "
            f"{r['cpu_source']}"
        )
    print("(GPU better by: GPU/CPU for rates, CPU/GPU for times; '-' = no CPU figure of that name and size)")


def plot(rows: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = [s for s in STEPS if any(r["section"] == s for r in rows)]
    if not sections:
        return
    tallest = max(sum(r["section"] == s for r in rows) for s in sections)
    fig, axes = plt.subplots(1, len(sections), figsize=(11 * len(sections), 1.5 + 0.3 * tallest), squeeze=False)
    for ax, section in zip(axes[0], sections):
        mine = [r for r in rows if r["section"] == section]
        ys = range(len(mine))
        ax.barh([y + 0.2 for y in ys], [r["cpu"] or 0 for r in mine], 0.4, color="#888", label="CPU")
        ax.barh([y - 0.2 for y in ys], [r["gpu"] or 0 for r in mine], 0.4, color="#3a7", label="GPU")
        for y, r in zip(ys, mine):
            if r["speedup"]:
                ax.text(max(r["cpu"], r["gpu"]), y, f" {r['speedup']:.1f}x", va="center", fontsize=6)
        ax.set_yticks(list(ys), [f"{r['figure']} ({r['unit']})" for r in mine], fontsize=6)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_title(f"{section}: GPU vs CPU (label: how much better the GPU is)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="x", which="both")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="encode and recommend: alternating rounds")
    parser.add_argument("--index-sizes", default="1000000", help="index: catalogue sizes, comma-separated")
    parser.add_argument("--index-queries", type=int, default=500, help="index: query vectors")
    parser.add_argument("--recommend-sizes", default="100000,1000000", help="recommend: catalogue sizes")
    parser.add_argument("--steps", default=",".join(STEPS), help="which of encode,index,recommend to run")
    parser.add_argument("--quick", action="store_true", help="smoke run: few texts, 20k-item index, 5k catalogue")
    args = parser.parse_args(argv)
    steps = [s for s in args.steps.split(",") if s.strip()]
    if set(steps) - set(STEPS):
        parser.error(f"--steps: choose from {','.join(STEPS)}")

    info = cuda_info()
    if info is None:
        print("no CUDA GPU found (torch.cuda.is_available() is False): nothing ran, bench/results/ untouched")
        return 0
    if os.environ.get("BERTREC_MODEL_PATH") or os.environ.get("BERTREC_MODEL_QUANTIZE", "none") != "none":
        # recommend's catalogue is pre-encoded by the packaged model: another would re-encode it all.
        raise SystemExit("unset BERTREC_MODEL_PATH / BERTREC_MODEL_QUANTIZE: the catalogue is pre-encoded")
    if args.quick:
        args.index_sizes, args.recommend_sizes = "20000", "5000"
    args.index_sizes = [int(s) for s in args.index_sizes.split(",") if s.strip()]
    args.recommend_sizes = [int(s) for s in args.recommend_sizes.split(",") if s.strip()]
    name = "gpu-quick" if args.quick else "gpu"
    log = RESULTS / f"{name}-server.log"
    log.unlink(missing_ok=True)
    gpus = info["count"]
    print(
        f"{gpus} x {info['name']}, driver {info['driver']}, CUDA {info['cuda_driver']} (torch built for "
        f"{info['cuda_torch']}), torch {info['torch']}, faiss {info['faiss']} with {info['faiss_gpus']} GPU(s)",
        flush=True,
    )
    if not info["faiss_gpus"]:
        print("faiss has no GPU support here (faiss-cpu): the index figures will be CPU figures of this machine")

    began = time.perf_counter()
    result: dict = {"command": "python bench/gpu.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    result["gpu"] = info
    if "encode" in steps:
        result["encode"] = encode_step(args, gpus, log)
    if {"index", "recommend"} & set(steps):
        movie_ids, real = index_bench.real_vectors()
        catalogue = index_bench.Catalogue(real)
        if "index" in steps:
            result["index"] = index_step(args, catalogue, movie_ids)
        if "recommend" in steps:
            result["recommend"] = recommend_step(args, gpus, catalogue, movie_ids, log)
    result["run_s"] = time.perf_counter() - began
    earlier = RESULTS / f"{name}.json"
    if earlier.exists():  # a run of some --steps keeps the others' figures from the last run on this GPU
        old = json.loads(earlier.read_text())
        for step in (s for s in STEPS if s not in result and s in old and old["gpu"]["name"] == info["name"]):
            result[step] = old[step]
            result.setdefault("steps_from_earlier_run", {})[step] = old["date"]

    cpu = cpu_results(args.quick)
    makers = {"encode": encode_figures, "index": index_figures, "recommend": recommend_figures}
    rows = [row for step in STEPS if step in result for row in makers[step](result[step], cpu[step])]
    result["cpu_files"] = {step: [file for file, _ in files] for step, files in cpu.items()}
    result["comparison"] = rows
    path = write_results(name, result)
    plot(rows, f"{info['name']} vs the CPU figures, {date.today().isoformat()}", path.with_suffix(".png"))
    if "index" in result:
        index_bench.print_tables(result["index"])
    if "recommend" in result:
        recommend_bench.print_tables(result["recommend"])
    print_table(rows)
    print(
        f"\n{info['name']}: ran {', '.join(steps)} in {result['run_s']:.0f}s; "
        f"wrote {path} and {path.with_suffix('.png')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
