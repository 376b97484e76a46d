"""Cheaper CPU encoders (bf16, int8) vs fp32: throughput, vector agreement and the offline effect, in one run.

    python bench/quantization.py [--rounds 5] [--texts 1024] [--singles 128] [--threads 1] [--cold-seeds 5]
                                 [--variants fp32-torch,bf16,bf16-torch,int8,int8-torch]

Every encoder is `BertEncoder` in this process (the packaged all-MiniLM-L6-v2) with its
`quantize` setting, on the runtime a replica picks for it (model.runtime auto: fp32 on ONNX
Runtime, bf16 and int8 on OpenVINO, int8 there being calibrated static quantization by NNCF);
"-torch" variants run the same weights on eager torch (int8-torch: torch's dynamic quantization),
so what the weight format buys on one runtime and what it buys over the default are both there. Throughput
alternates between them round by round on the same MovieLens titles
(batches of 64, as a replica's batcher forms them, and single texts); the ratio of medians is the
figure. Then the whole catalogue is encoded with each, and the vectors are compared (cosine per
item, item-item top-10 neighbours, and how much a title's vector depends on its batch) and scored
by zero-shot retrieval: warm split NDCG@10, plus the cold-item split over `--cold-seeds` draws,
paired per user. `--threads 1` matches a default CPU replica (`workers.cpus_per_replica = 1`).
Prints a table, writes bench/results/quantization.json and quantization.png.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import write_results  # noqa: E402

BASELINE = "fp32"
NEIGHBOUR_QUERIES = 1000


def rate_batched(encoder, texts: list[str], batch: int) -> float:
    began = time.perf_counter()
    for start in range(0, len(texts), batch):
        encoder.encode_items(texts[start : start + batch])
    return len(texts) / (time.perf_counter() - began)


def rate_single(encoder, texts: list[str]) -> float:
    began = time.perf_counter()
    for text in texts:
        encoder.encode_items([text])
    return len(texts) / (time.perf_counter() - began)


def encode_all(encoder, texts: list[str]) -> tuple[np.ndarray, float]:
    began = time.perf_counter()
    vectors = np.concatenate([encoder.encode_items(texts[i : i + 512]) for i in range(0, len(texts), 512)])
    return vectors, len(texts) / (time.perf_counter() - began)


def neighbour_overlap(a: np.ndarray, b: np.ndarray, k: int, queries: np.ndarray) -> float:
    """Mean share of each query item's top-k catalogue neighbours that both vector sets agree on."""

    def top(v: np.ndarray) -> np.ndarray:
        sims = v[queries] @ v.T
        sims[np.arange(len(queries)), queries] = -np.inf
        return np.argpartition(-sims, k, axis=1)[:, :k]

    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(top(a), top(b))]))


def zero_shot(vectors: dict[str, np.ndarray], split) -> dict:
    from bertrec.evaluation.methods import TrainData, ZeroShot
    from bertrec.evaluation.metrics import paired_difference
    from bertrec.evaluation.runner import run_method

    data = TrainData.build(split.train)
    results = {name: run_method(ZeroShot(v), split, data) for name, v in vectors.items()}
    out: dict = {"users": len(results[BASELINE].users)}
    for name, r in results.items():
        out[name] = {"ndcg@10": r.mean("ndcg@10"), "recall@20": r.mean("recall@20")}
        if name != BASELINE:
            diff, se = paired_difference(r.per_user["ndcg@10"], results[BASELINE].per_user["ndcg@10"])
            out[name] |= {"minus_fp32_ndcg@10": diff, "minus_fp32_ndcg@10_se": se}
    return out


COLOURS = {"fp32": "#888", "fp32-torch": "#bbb", "bf16": "#3a7", "bf16-torch": "#9c9", "int8": "#37a"}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = result["variants"]
    cheaper = [v for v in variants if v != BASELINE]
    fig, (speed, agree, quality) = plt.subplots(1, 3, figsize=(15, 4))
    tp = result["throughput"]
    groups = [("batches of 64", "batch64"), ("single texts", "single"), ("catalogue, 512 per call", "catalogue")]
    x = np.arange(len(groups))
    width = 0.8 / len(variants)
    for n, name in enumerate(variants):
        offset = (n - (len(variants) - 1) / 2) * width
        values = [tp[key][name]["texts_per_s"] for _, key in groups]
        speed.bar(x + offset, values, width, label=name, color=COLOURS.get(name))
        if name != BASELINE:
            for xi, (v, (_, key)) in enumerate(zip(values, groups)):
                speed.text(xi + offset, v, f"{tp[key][name]['ratio']:.2f}x", ha="center", va="bottom", fontsize=8)
    speed.set_xticks(x, [g for g, _ in groups])
    speed.set_ylabel(f"texts / s ({result['threads']} torch thread(s), median of rounds)")
    speed.set_title("Encode throughput, same titles, same run")
    speed.legend()
    for name in cheaper:
        a = result["agreement"][name]
        edges = np.asarray(a["cosine_histogram"]["edges"])
        agree.stairs(a["cosine_histogram"]["counts"], edges, label=f"{name}: mean {a['cosine_mean']:.4f}",
                     color=COLOURS.get(name), fill=True, alpha=0.6)  # fmt: skip
    agree.set_xlabel("cosine(vector, fp32 vector) per catalogue item")
    agree.set_ylabel("items")
    agree.set_title("Agreement with fp32")
    agree.legend()
    offline = result["offline"]
    labels = ["warm", f"cold ({len(offline['cold']['seeds'])} seeds)"]
    for n, name in enumerate(variants):
        offset = (n - (len(variants) - 1) / 2) * width
        values = [offline["warm"][name]["ndcg@10"], offline["cold"][name]["ndcg@10"]]
        quality.bar(np.arange(2) + offset, values, width, label=name, color=COLOURS.get(name))
    quality.set_xticks(np.arange(2), labels)
    quality.set_ylabel("zero-shot NDCG@10")
    quality.set_title("Offline effect (MovieLens-small)")
    quality.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def agreement_of(reference: np.ndarray, vectors: np.ndarray, queries: np.ndarray) -> dict:
    cosine = np.sum(reference * vectors, axis=1)
    # A fixed lower edge: vectors that agree to float precision (fp32 on another runtime) have no
    # spread to cut into 40 bins.
    counts, edges = np.histogram(cosine, bins=40, range=(min(float(cosine.min()), 0.999), float(cosine.max()) + 1e-6))
    return {
        "cosine_mean": float(cosine.mean()),
        "cosine_p1": float(np.percentile(cosine, 1)),
        "cosine_min": float(cosine.min()),
        "top10_neighbour_overlap": neighbour_overlap(reference, vectors, 10, queries),
        "cosine_histogram": {"counts": counts.tolist(), "edges": edges.tolist()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--texts", type=int, default=1024, help="titles encoded in batches of 64 per round")
    parser.add_argument("--singles", type=int, default=128, help="titles encoded one at a time per round")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 = a default CPU replica)")
    parser.add_argument("--cold-seeds", type=int, default=5)
    parser.add_argument(
        "--variants",
        default="fp32-torch,bf16,bf16-torch,int8,int8-torch",
        help="quantize settings compared with fp32; -torch = on eager torch instead of the default runtime",
    )
    args = parser.parse_args()

    import torch

    from bertrec.evaluation.data import load_movielens
    from bertrec.evaluation.splits import cold_item_split, warm_split
    from bertrec.movielens import bundled_path
    from bertrec.workers.encoder import BertEncoder, default_model_path

    torch.set_num_threads(args.threads)
    dataset = load_movielens(bundled_path())  # item text "Title (year)", as the demo serves it
    catalogue = [i.text for i in dataset.items]
    rng = np.random.default_rng(0)
    texts = [catalogue[i] for i in rng.choice(len(catalogue), args.texts, replace=False)]
    singles = texts[: args.singles]
    encoders = {BASELINE: BertEncoder(default_model_path(), "cpu")}
    print(f"fp32 baseline on {encoders[BASELINE].runtime}")
    for name in args.variants.split(","):
        weights, _, runtime = name.partition("-")  # "bf16-torch": bf16 weights, torch runtime
        quantize = "none" if weights == "fp32" else weights
        encoder = BertEncoder(default_model_path(), "cpu", quantize=quantize, runtime=runtime or "auto")
        if encoder.quantize != quantize:  # e.g. bf16 on a CPU without native bf16
            print(f"skipping {name}: this CPU runs it as {encoder.quantize}")
            continue
        encoders[name] = encoder
    variants = list(encoders)
    for encoder in encoders.values():  # warm-up
        rate_batched(encoder, texts[:128], 64)
        rate_single(encoder, singles[:16])

    rounds: dict[str, dict[str, list[float]]] = {key: {v: [] for v in variants} for key in ("batch64", "single")}
    for r in range(args.rounds):  # alternate, and reverse the order, so machine noise hits all alike
        order = variants if r % 2 == 0 else variants[::-1]
        for name in order:
            rounds["batch64"][name].append(rate_batched(encoders[name], texts, 64))
        for name in order:
            rounds["single"][name].append(rate_single(encoders[name], singles))
        print(
            f"round {r + 1}/{args.rounds}: batch64 "
            + " ".join(f"{n} {rounds['batch64'][n][-1]:.0f}/s" for n in variants)
            + ", single "
            + " ".join(f"{n} {rounds['single'][n][-1]:.0f}/s" for n in variants),
            flush=True,
        )
    throughput: dict[str, dict] = {}
    for key, per_variant in rounds.items():
        base = statistics.median(per_variant[BASELINE])
        throughput[key] = {
            n: {
                "rounds": per_variant[n],
                "texts_per_s": statistics.median(per_variant[n]),
                "ratio": statistics.median(per_variant[n]) / base,
                "per_round_ratio_median": statistics.median(
                    a / b for a, b in zip(per_variant[n], per_variant[BASELINE])
                ),
            }
            for n in variants
        }

    vectors: dict[str, np.ndarray] = {}
    catalogue_rate: dict[str, float] = {}
    for name in variants:
        print(f"encoding the catalogue ({len(catalogue)} titles) with {name} ...", flush=True)
        vectors[name], catalogue_rate[name] = encode_all(encoders[name], catalogue)
    throughput["catalogue"] = {
        n: {"texts_per_s": catalogue_rate[n], "ratio": catalogue_rate[n] / catalogue_rate[BASELINE]} for n in variants
    }

    queries = rng.choice(len(catalogue), NEIGHBOUR_QUERIES, replace=False)
    agreement = {n: agreement_of(vectors[BASELINE], vectors[n], queries) for n in variants if n != BASELINE}
    # Dynamic int8 scales activations per batch, so a text's int8 vector depends on the texts
    # that share its batch: compare each single title encoded alone with it inside a batch.
    for name, encoder in encoders.items():
        alone = np.concatenate([encoder.encode_items([t]) for t in singles])
        in_batch = np.concatenate([encoder.encode_items(singles[i : i + 64]) for i in range(0, len(singles), 64)])
        same = np.sum(alone * in_batch, axis=1)
        agreement.setdefault(name, {})["alone_vs_batch_of_64"] = {
            "cosine_mean": float(same.mean()),
            "cosine_min": float(same.min()),
        }

    print("zero-shot retrieval, warm split ...", flush=True)
    warm = zero_shot(vectors, warm_split(dataset))
    cold_runs = []
    for seed in range(args.cold_seeds):
        print(f"zero-shot retrieval, cold split seed {seed} ...", flush=True)
        cold_runs.append(zero_shot(vectors, cold_item_split(dataset, seed=seed)))
    cold: dict = {"seeds": list(range(args.cold_seeds)), "per_seed": cold_runs}
    for name in variants:
        cold[name] = {m: float(np.mean([c[name][m] for c in cold_runs])) for m in ("ndcg@10", "recall@20")}
        if name != BASELINE:
            diffs = [c[name]["minus_fp32_ndcg@10"] for c in cold_runs]
            cold[name] |= {"minus_fp32_ndcg@10": float(np.mean(diffs)), "seed_spread": float(np.std(diffs))}

    result = {
        "command": "python bench/quantization.py " + " ".join(sys.argv[1:]),
        "model": "all-MiniLM-L6-v2 (packaged)",
        "threads": args.threads,
        "texts": args.texts,
        "singles": args.singles,
        "variants": variants,
        "runtimes": {n: e.runtime for n, e in encoders.items()},
        "items": len(catalogue),
        "throughput": throughput,
        "agreement": agreement,
        "offline": {"warm": warm, "cold": cold},
    }
    path = write_results("quantization", result)
    plot(result, path.with_suffix(".png"))

    print(f"\nthroughput, texts/s ({args.threads} torch thread(s); median of {args.rounds} alternating rounds)")
    print(f"{'':<26} " + " ".join(f"{n:>14}" for n in variants))
    for label, key in (("batches of 64", "batch64"), ("single texts", "single"), ("catalogue (1 pass)", "catalogue")):
        cells = [f"{throughput[key][n]['texts_per_s']:7.0f} ({throughput[key][n]['ratio']:.2f}x)" for n in variants]
        print(f"{label:<26} " + " ".join(f"{c:>14}" for c in cells))
    for name in variants:
        a = agreement[name]
        if name != BASELINE:
            print(
                f"\n{name} vs fp32 over {len(catalogue)} items: cosine mean {a['cosine_mean']:.4f}, 1st percentile "
                f"{a['cosine_p1']:.4f}, min {a['cosine_min']:.4f}; top-10 neighbour overlap "
                f"{a['top10_neighbour_overlap']:.3f}"
            )
        same = a["alone_vs_batch_of_64"]
        print(
            f"{name}: a title alone vs in a batch of 64: "
            f"cosine mean {same['cosine_mean']:.4f}, min {same['cosine_min']:.4f}"
        )
    print(f"\nzero-shot NDCG@10 {'':<14} " + " ".join(f"{n:>22}" for n in variants))
    for label, block in (("warm", warm), (f"cold, {args.cold_seeds} seeds", cold)):
        cells = []
        for n in variants:
            cell = f"{block[n]['ndcg@10']:.4f}"
            if n != BASELINE:
                relative = block[n]["minus_fp32_ndcg@10"] / block[BASELINE]["ndcg@10"]
                cell += f" ({relative:+.1%})"
            cells.append(cell)
        print(f"{label:<32} " + " ".join(f"{c:>22}" for c in cells))
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
