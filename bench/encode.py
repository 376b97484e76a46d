"""Encode throughput through the service vs in-process sentence-transformers on the same texts.

    python bench/encode.py [--rounds 3] [--quick]

Texts/s through the service (SDK -> gRPC -> front end -> Ray pool -> replicas) at 1, 8 and 32
concurrent callers, each sending one text per request or batches of 16, for three text lengths
built from MovieLens (titles; about 60 and 120 tokens), against in-process sentence-transformers
`encode` (the packaged all-MiniLM-L6-v2, 2 torch threads, batch 64) of the same texts. All of it
alternates within each round of one run; the ratio of medians to in-process is the figure.

Replicas run the fp32 model on ONNX Runtime by default (model.runtime auto), sentence-transformers
on torch. So the service's own cost is shown against a second in-process baseline on the same
runtime: `BertEncoder(runtime="onnx")` with 2 threads encoding all the texts in one call.

Also, at 32 single-text callers (after the main rounds, with the servers of (b) and (c) started
beside the default one only then, so that none idles beside the main measurements):
  (a) batching across callers vs per-request encoding: the same server set to max_batch_size 1
      with Admin.ConfigureBatching (one text per model call) vs its default;
  (b) two replicas with 1 torch thread each (the default on 2 cores) vs one replica with 2 threads,
      a second server started beside the first;
  (c) the replicas' runtime: ONNX Runtime (default) vs eager torch (`--runtime torch`), a third
      server.
Every service measurement records where the CPU went (this process = the callers' SDK; the front
end; the replicas; the rest of Ray) and the replicas' batching (mean batch, model calls, padding).

Prints tables, writes bench/results/encode.json and encode.png (quick: encode-quick.*).
--quick is a smoke run of the same shape, fewer texts and one round (about 2-3 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, ServedBertrec, cpu_seconds, process_tree, write_results  # noqa: E402

CALLERS = (1, 8, 32)
BATCH = 16  # texts per request in the batched mode (> 8: not merged by the front end's coalescer)
LENGTHS = {"short": 0, "medium": 60, "long": 120}  # target tokens ([CLS] and [SEP] included); 0 = titles
TEXTS = {"short": 1024, "medium": 384, "long": 256}  # per measurement: each takes a few seconds
QUICK_TEXTS = {"short": 128, "medium": 64, "long": 48}
DEFAULT_BATCHING = {"max_batch_size": 64, "max_wait_s": 0.005, "max_batch_tokens": 8192}  # WorkersConfig


def movielens_texts(tokenizer, target_tokens: int, n: int) -> list[str]:
    """`n` texts of distinct movies: "Title (year)" (target 0), or the title, its genres and tags,
    then other movies as "also watched", cut at `target_tokens` tokens of the model's tokenizer."""
    from bertrec.movielens import bundled_path, read_movies

    folder = bundled_path()
    movies = list(read_movies(folder))
    tags: dict[int, Counter] = defaultdict(Counter)
    with open(folder / "tags.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            tags[int(row["movieId"])][row["tag"].strip().lower()] += 1
    picked = [movies[(i * 7) % len(movies)] for i in range(n)]  # spread over the catalogue
    if not target_tokens:
        return [m.text for m in picked]

    def about(m) -> str:
        words = [", ".join(m.metadata.get("genres", []))] + [t for t, _ in tags[m.id].most_common(3)]
        return f"{m.text}: {'; '.join(w for w in words if w)}."

    texts = []
    for i, movie in enumerate(picked):
        text, j = about(movie), i
        while len(tokenizer(text)["input_ids"]) < target_tokens:
            j += 1
            text += " Also watched: " + about(movies[(j * 13) % len(movies)])
        ends = [end for _, end in tokenizer(text, return_offsets_mapping=True)["offset_mapping"]]
        texts.append(text[: ends[target_tokens - 2]])  # target - 2 content tokens + [CLS] + [SEP]
    return texts


def measurement_texts(tokenizer, counts: dict[str, int]) -> tuple[dict[str, list[str]], dict[str, float]]:
    """`counts[length]` texts of each length in LENGTHS, and their mean token count."""
    texts = {length: movielens_texts(tokenizer, target, counts[length]) for length, target in LENGTHS.items()}
    token_means = {
        length: statistics.mean(len(ids) for ids in tokenizer(batch)["input_ids"]) for length, batch in texts.items()
    }
    return texts, token_means


def in_process_rate(model, texts: list[str]) -> tuple[float, float]:
    """(texts/s, CPU seconds per text) of sentence-transformers encode in this process."""
    began, cpu = time.perf_counter(), time.process_time()
    model.encode(texts, batch_size=64)
    return len(texts) / (time.perf_counter() - began), (time.process_time() - cpu) / len(texts)


def same_runtime_rate(encoder, texts: list[str]) -> float:
    """Texts/s of the replicas' own encoder (ONNX Runtime on CPU) in this process, all texts in one
    call: the baseline that leaves only the service's own cost in the ratio."""
    began = time.perf_counter()
    encoder.encode_items(texts)
    return len(texts) / (time.perf_counter() - began)


class Server:
    """A served bertrec with no catalogue, and the CPU accounting of its process tree."""

    def __init__(self, data_dir: Path, log: Path, replicas: int, threads: int, *extra: str):
        env = {"BERTREC_WORKERS_CPUS_PER_REPLICA": str(threads)}  # also each replica's torch threads
        self.label = f"{replicas} x {threads} thread{'s' if threads > 1 else ''}"
        self.served = ServedBertrec(data_dir, "--no-demo", "--replicas", str(replicas), *extra, log=log, env=env)
        self.target = self.served.target

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: front end (the serve process), replicas, and the rest of its Ray."""
        out = {"front_end": 0.0, "replicas": 0.0, "ray_other": 0.0}
        for pid in process_tree(self.served.proc.pid):
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            part = "front_end" if pid == self.served.proc.pid else "replicas" if b"EncoderReplica" in command else None
            out[part or "ray_other"] += cpu_seconds(pid)
        return out

    def batching(self) -> dict[str, float]:
        from bertrec.client import Client

        with Client(self.target, timeout_s=60) as client:
            replicas = client.info().replicas
        texts = sum(r.encoded_texts for r in replicas)
        batches = sum(r.encoded_texts / r.mean_batch_size for r in replicas if r.mean_batch_size)
        return {"texts": texts, "batches": batches}


async def _drive(target: str, requests: list[list[str]], callers: int) -> float:
    from bertrec.client import AsyncClient

    todo = requests[::-1]
    async with AsyncClient(target, timeout_s=600) as client:
        await client.encode(["warm-up"])  # the channel is connected before the clock starts

        async def caller():
            while todo:
                await client.encode(todo.pop())

        began = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        return time.perf_counter() - began


def service_rate(server: Server, texts: list[str], callers: int, per_request: int) -> dict:
    """Texts/s through the service, with where the CPU went and how the replicas batched."""
    requests = [texts[i : i + per_request] for i in range(0, len(texts), per_request)]
    cpu0, own0, batching0 = server.cpu(), time.process_time(), server.batching()
    elapsed = asyncio.run(_drive(server.target, requests, callers))
    cpu1, own1, batching1 = server.cpu(), time.process_time(), server.batching()
    n = len(texts)
    batches = batching1["batches"] - batching0["batches"]
    cpu_ms = {"callers_sdk": (own1 - own0) * 1000 / n} | {k: (cpu1[k] - cpu0[k]) * 1000 / n for k in cpu0}
    return {
        "texts_per_s": n / elapsed,
        "cpu_ms_per_text": cpu_ms,
        "mean_batch_size": (batching1["texts"] - batching0["texts"]) / batches if batches else 0.0,
    }


def configure(target: str, **settings) -> None:
    from bertrec.client import Client

    with Client(target, timeout_s=60) as client:
        client.configure_batching(**settings)


def measure_texts(models, batch: list[str], a: Server, servers: tuple[Server, ...], out: dict) -> None:
    """In-process (both baselines), then the service `a` at every caller count with 1 and BATCH
    texts per request."""
    model, same_runtime = models
    idle0, began = sum(sum(s.cpu().values()) for s in servers), time.perf_counter()
    rate, cpu_per_text = in_process_rate(model, batch)
    idle = (sum(sum(s.cpu().values()) for s in servers) - idle0) / (time.perf_counter() - began)
    # The idle servers' CPU while in-process runs (cores busy with them): it slows the baseline.
    record = {"texts_per_s": rate, "cpu_ms_per_text": cpu_per_text * 1000, "idle_servers_cores": idle}
    out["in_process"].append(record)
    out["in_process_same_runtime"].append({"texts_per_s": same_runtime_rate(same_runtime, batch)})
    for callers in CALLERS:
        for mode, per_request in (("single", 1), ("batched", BATCH)):
            out[f"{mode}_{callers}"].append(service_rate(a, batch, callers, per_request))


def run_round(models, texts: dict[str, list[str]], a: Server, out: dict) -> None:
    """The main figures and (a), with `a` the only server running: idle servers beside it would
    take CPU slices that stall the 2-thread in-process baseline more than the service."""
    for length, batch in texts.items():
        measure_texts(models, batch, a, (a,), out[length])
        configure(a.target, max_batch_size=1)  # (a): one text per model call, nothing merged
        try:
            out[length]["per_request_32"].append(service_rate(a, batch, 32, 1))
        finally:
            configure(a.target, **DEFAULT_BATCHING)


def run_layout_round(texts: dict[str, list[str]], servers: tuple[Server, Server, Server], out: dict) -> None:
    """(b) and (c): the default server against the other layouts, all three running alike."""
    a, b, c = servers
    for length, batch in texts.items():
        out[length]["default_32_beside_others"].append(service_rate(a, batch, 32, 1))
        out[length]["one_replica_2_threads_32"].append(service_rate(b, batch, 32, 1))  # (b)
        out[length]["torch_runtime_32"].append(service_rate(c, batch, 32, 1))  # (c)


def median(rounds: list[dict], key: str = "texts_per_s") -> float:
    return statistics.median(r[key] for r in rounds)


def summarise(raw: dict, token_means: dict) -> dict:
    summary = {}
    for length, runs in raw.items():
        base = median(runs["in_process"])
        same = median(runs["in_process_same_runtime"])
        row = {"mean_tokens": token_means[length], "in_process_texts_per_s": base}
        row["in_process_same_runtime_texts_per_s"] = same
        for key, rounds in runs.items():
            if key.startswith("in_process"):
                continue
            row[key] = {
                "texts_per_s": median(rounds),
                "ratio_to_in_process": median(rounds) / base,
                "ratio_to_same_runtime": median(rounds) / same,
                "mean_batch_size": statistics.median(r["mean_batch_size"] for r in rounds),
                "cpu_ms_per_text": {
                    part: statistics.median(r["cpu_ms_per_text"][part] for r in rounds)
                    for part in rounds[0]["cpu_ms_per_text"]
                },
            }
        row["in_process_cpu_ms_per_text"] = median(runs["in_process"], "cpu_ms_per_text")
        row["idle_servers_cores_during_in_process"] = median(runs["in_process"], "idle_servers_cores")
        if "per_request_32" in row:  # (a) was measured
            row["batching_gain_32"] = row["single_32"]["texts_per_s"] / row["per_request_32"]["texts_per_s"]
        if "default_32_beside_others" in row:  # (b) and (c) were measured
            default = row["default_32_beside_others"]["texts_per_s"]
            row["two_replicas_vs_one_32"] = default / row["one_replica_2_threads_32"]["texts_per_s"]
            row["onnx_vs_torch_runtime_32"] = default / row["torch_runtime_32"]["texts_per_s"]
        summary[length] = row
    return summary


def print_tables(summary: dict) -> None:
    header = " ".join(f"{f'{c} x {m}':>15}" for c in CALLERS for m in ("1", str(BATCH)))
    print(f"\n{'texts':<7}{'tokens':>7}{'in-proc/s':>10} | {header}")
    for length, row in summary.items():
        cells = [
            f"{row[f'{m}_{c}']['texts_per_s']:7.0f} {row[f'{m}_{c}']['ratio_to_in_process']:5.2f}x"
            for c in CALLERS
            for m in ("single", "batched")
        ]
        line = " ".join(f"{x:>15}" for x in cells)
        print(f"{length:<7}{row['mean_tokens']:7.0f}{row['in_process_texts_per_s']:10.0f} | {line}")
    print("(callers x texts per request: service texts/s and ratio to in-process)")

    print(f"\n{'texts':<7}{'same-runtime/s':>15} | {header}")
    for length, row in summary.items():
        cells = [f"{row[f'{m}_{c}']['ratio_to_same_runtime']:5.2f}x" for c in CALLERS for m in ("single", "batched")]
        line = " ".join(f"{x:>15}" for x in cells)
        print(f"{length:<7}{row['in_process_same_runtime_texts_per_s']:15.0f} | {line}")
    print("(the same runs over the in-process baseline on the replicas' runtime: the service's own cost)")

    print(f"\n{'texts':<7}{'batched (default)':>19}{'max_batch_size 1':>18}{'gain':>7} | ", end="")
    print(f"{'2 x 1 thread':>13}{'1 x 2 threads':>14}{'ratio':>7}")
    for length, row in summary.items():
        print(
            f"{length:<7}{row['single_32']['texts_per_s']:19.0f}{row['per_request_32']['texts_per_s']:18.0f}"
            f"{row['batching_gain_32']:6.2f}x | {row['default_32_beside_others']['texts_per_s']:13.0f}"
            f"{row['one_replica_2_threads_32']['texts_per_s']:14.0f}{row['two_replicas_vs_one_32']:6.2f}x"
        )
    print("(32 single-text callers, texts/s: (a) batching across callers vs per-request; (b) replica layout)")

    print(f"\n{'texts':<7}{'onnx (default)':>15}{'torch':>8}{'ratio':>7}")
    for length, row in summary.items():
        onnx, torch_rate = row["default_32_beside_others"]["texts_per_s"], row["torch_runtime_32"]["texts_per_s"]
        print(f"{length:<7}{onnx:15.0f}{torch_rate:8.0f}{row['onnx_vs_torch_runtime_32']:6.2f}x")
    print("(32 single-text callers, texts/s: (c) the replicas' runtime)")

    print(f"\n{'texts':<7}{'setting':<26}{'mean batch':>11}  CPU ms per text:", end=" ")
    print("callers' SDK / front end / replicas / Ray other  (in-process)")
    for length, row in summary.items():
        settings = ("single_1", "single_32", "batched_32", "per_request_32", "one_replica_2_threads_32")
        for key in (*settings, "torch_runtime_32"):
            cpu = row[key]["cpu_ms_per_text"]
            parts = " / ".join(f"{cpu[p]:5.2f}" for p in ("callers_sdk", "front_end", "replicas", "ray_other"))
            own = row["in_process_cpu_ms_per_text"]
            print(f"{length:<7}{key:<26}{row[key]['mean_batch_size']:11.1f}  {parts}  ({own:.2f})")


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right, runtime) = plt.subplots(1, 4, figsize=(20, 5.2))
    colours = {"short": "#3a7", "medium": "#37a", "long": "#a73"}
    for length, row in summary.items():
        for mode, style in (("single", "-o"), ("batched", "--s")):
            ratios = [row[f"{mode}_{c}"]["ratio_to_in_process"] for c in CALLERS]
            label = (
                f"{length} ({row['mean_tokens']:.0f} tok), {'1 text' if mode == 'single' else f'{BATCH} texts'}/request"
            )
            left.plot([str(c) for c in CALLERS], ratios, style, color=colours[length], label=label)
    left.axhline(1.0, color="#888", lw=0.8)
    left.set_xlabel("concurrent callers")
    left.set_ylabel("service / in-process texts/s")
    left.set_title("Encode through the service vs in-process")
    left.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    names = list(summary)
    xs = range(len(names))
    for ax, (key_a, label_a), (key_b, label_b), title in (
        (
            middle,
            ("single_32", "batched (default)"),
            ("per_request_32", "max_batch_size 1"),
            "(a) batching, 32 single-text callers",
        ),
        (
            right,
            ("default_32_beside_others", "2 replicas x 1 thread"),
            ("one_replica_2_threads_32", "1 replica x 2 threads"),
            "(b) replica layout, 32 single-text callers",
        ),
        (
            runtime,
            ("default_32_beside_others", "ONNX Runtime (default)"),
            ("torch_runtime_32", "eager torch"),
            "(c) replicas' runtime, 32 single-text callers",
        ),
    ):
        first = [summary[n][key_a]["texts_per_s"] for n in names]
        second = [summary[n][key_b]["texts_per_s"] for n in names]
        ax.bar([x - 0.2 for x in xs], first, 0.4, label=label_a, color="#3a7")
        ax.bar([x + 0.2 for x in xs], second, 0.4, label=label_b, color="#888")
        for x, (u, v) in enumerate(zip(first, second)):
            ax.text(x, max(u, v), f"{u / v:.2f}x", ha="center", va="bottom")
        ax.set_xticks(list(xs), names)
        ax.set_ylabel("texts / s (median of rounds)")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer texts, one round")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    counts = QUICK_TEXTS if args.quick else TEXTS
    name = "encode-quick" if args.quick else "encode"

    import torch
    from sentence_transformers import SentenceTransformer

    from bertrec.workers.encoder import BertEncoder, default_model_path

    torch.set_num_threads(2)
    model = SentenceTransformer(default_model_path(), device="cpu")
    same_runtime = BertEncoder(default_model_path(), "cpu", runtime="onnx")  # 2 threads, as above
    texts, token_means = measurement_texts(model.tokenizer, counts)
    model.encode(texts["short"][:64])  # warm-up
    same_runtime.encode_items(texts["short"][:64])
    log = RESULTS / f"{name}-server.log"
    log.unlink(missing_ok=True)
    raw: dict = {length: defaultdict(list) for length in texts}
    load_before = os.getloadavg()  # other work on the machine: the figures are only as quiet as it was
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        a = Server(Path(tmp) / "a", log, replicas=2, threads=1)
        b = c = None
        try:
            service_rate(a, texts["short"][:32], 8, 1)  # warm-up: replicas' first calls
            for r in range(rounds):
                run_round((model, same_runtime), texts, a, raw)
                print(f"round {r + 1}/{rounds} done after {time.perf_counter() - began:.0f}s", flush=True)
            b = Server(Path(tmp) / "b", log, replicas=1, threads=2)
            c = Server(Path(tmp) / "c", log, 2, 1, "--runtime", "torch")
            for server in (b, c):
                service_rate(server, texts["short"][:32], 8, 1)
            for r in range(rounds):
                run_layout_round(texts, (a, b, c), raw)
                print(f"layout round {r + 1}/{rounds} done after {time.perf_counter() - began:.0f}s", flush=True)
        finally:
            for server in (a, b, c):
                if server is not None:
                    server.served.stop()
    summary = summarise(raw, token_means)
    result = {
        "command": "python bench/encode.py " + " ".join(sys.argv[1:]),
        "setup": {
            "in_process": "sentence-transformers encode, batch_size 64, 2 torch threads, this process",
            "in_process_same_runtime": "BertEncoder(runtime='onnx').encode_items, 2 threads, all texts in one call",
            "service": "bertrec serve --no-demo --replicas 2 (1 thread each, ONNX Runtime), default batching",
            "torch_runtime": "the same with --runtime torch (eager PyTorch replicas)",
            "callers": list(CALLERS),
            "texts_per_request_batched": BATCH,
            "texts_per_measurement": counts,
            "rounds": rounds,
            "run_s": time.perf_counter() - began,
            "load_average_1_5_15_min": {"before": load_before, "after": os.getloadavg()},
        },
        "summary": summary,
        "rounds": {length: dict(runs) for length, runs in raw.items()},
    }
    path = write_results(name, result)
    plot(summary, path.with_suffix(".png"))
    print_tables(summary)
    idle = max(row["idle_servers_cores_during_in_process"] for row in summary.values())
    print(f"\nload average (1 min) before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}; ", end="")
    print(f"idle servers used up to {idle:.2f} cores while in-process ran")
    print(f"\nwrote {path} and {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
