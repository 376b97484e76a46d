"""int8 vs fp32 CPU encoder: throughput, vector agreement and the offline effect, side by side in one run.

    python bench/quantization.py [--rounds 5] [--texts 1024] [--singles 128] [--threads 1] [--cold-seeds 5]

Both encoders are `BertEncoder` in this process (the packaged all-MiniLM-L6-v2), one with
`quantize="int8"`. Throughput alternates between them round by round on the same MovieLens titles
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

VARIANTS = ("fp32", "int8")
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
    diff, se = paired_difference(results["int8"].per_user["ndcg@10"], results["fp32"].per_user["ndcg@10"])
    out: dict = {"users": len(results["fp32"].users)}
    for name, r in results.items():
        out[name] = {"ndcg@10": r.mean("ndcg@10"), "recall@20": r.mean("recall@20")}
    out["int8_minus_fp32_ndcg@10"] = diff
    out["int8_minus_fp32_ndcg@10_se"] = se
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (speed, agree, quality) = plt.subplots(1, 3, figsize=(15, 4))
    tp = result["throughput"]
    groups = [("batches of 64", "batch64"), ("single texts", "single"), ("catalogue, 512 per call", "catalogue")]
    x = np.arange(len(groups))
    for offset, name, colour in ((-0.2, "fp32", "#888"), (0.2, "int8", "#37a")):
        values = [tp[key][f"{name}_texts_per_s"] for _, key in groups]
        speed.bar(x + offset, values, 0.4, label=name, color=colour)
        if name == "int8":
            for xi, (v, (_, key)) in enumerate(zip(values, groups)):
                speed.text(xi + offset, v, f"{tp[key]['ratio']:.2f}x", ha="center", va="bottom")
    speed.set_xticks(x, [g for g, _ in groups])
    speed.set_ylabel(f"texts / s ({result['threads']} torch thread(s), median of rounds)")
    speed.set_title("Encode throughput, same titles, same run")
    speed.legend()
    cosine = np.asarray(result["agreement"]["cosine_histogram"]["counts"])
    edges = np.asarray(result["agreement"]["cosine_histogram"]["edges"])
    agree.bar(edges[:-1], cosine, width=np.diff(edges), align="edge", color="#37a")
    agree.set_xlabel("cosine(int8 vector, fp32 vector) per catalogue item")
    agree.set_ylabel("items")
    agree.set_title(
        f"Agreement: mean cosine {result['agreement']['cosine_mean']:.3f}, "
        f"top-10 overlap {result['agreement']['top10_neighbour_overlap']:.2f}"
    )
    offline = result["offline"]
    labels = ["warm", f"cold ({len(offline['cold']['seeds'])} seeds)"]
    for offset, name, colour in ((-0.2, "fp32", "#888"), (0.2, "int8", "#37a")):
        values = [offline["warm"][name]["ndcg@10"], offline["cold"][name]["ndcg@10"]]
        quality.bar(np.arange(2) + offset, values, 0.4, label=name, color=colour)
    quality.set_xticks(np.arange(2), labels)
    quality.set_ylabel("zero-shot NDCG@10")
    quality.set_title("Offline effect (MovieLens-small)")
    quality.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--texts", type=int, default=1024, help="titles encoded in batches of 64 per round")
    parser.add_argument("--singles", type=int, default=128, help="titles encoded one at a time per round")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 = a default CPU replica)")
    parser.add_argument("--cold-seeds", type=int, default=5)
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
    encoders = {
        "fp32": BertEncoder(default_model_path(), "cpu"),
        "int8": BertEncoder(default_model_path(), "cpu", quantize="int8"),
    }
    for encoder in encoders.values():  # warm-up
        rate_batched(encoder, texts[:128], 64)
        rate_single(encoder, singles[:16])

    rounds: dict[str, dict[str, list[float]]] = {key: {v: [] for v in VARIANTS} for key in ("batch64", "single")}
    for r in range(args.rounds):  # alternate, and swap who goes first, so machine noise hits both alike
        order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
        for name in order:
            rounds["batch64"][name].append(rate_batched(encoders[name], texts, 64))
        for name in order:
            rounds["single"][name].append(rate_single(encoders[name], singles))
        print(
            f"round {r + 1}/{args.rounds}: batch64 "
            + " ".join(f"{n} {rounds['batch64'][n][-1]:.0f}/s" for n in VARIANTS)
            + ", single "
            + " ".join(f"{n} {rounds['single'][n][-1]:.0f}/s" for n in VARIANTS),
            flush=True,
        )
    throughput: dict[str, dict] = {}
    for key, per_variant in rounds.items():
        med = {n: statistics.median(per_variant[n]) for n in VARIANTS}
        throughput[key] = {
            "rounds": per_variant,
            "fp32_texts_per_s": med["fp32"],
            "int8_texts_per_s": med["int8"],
            "ratio": med["int8"] / med["fp32"],
            "per_round_ratio_median": statistics.median(
                i / f for i, f in zip(per_variant["int8"], per_variant["fp32"])
            ),
        }

    vectors: dict[str, np.ndarray] = {}
    catalogue_rate: dict[str, float] = {}
    for name in VARIANTS:
        print(f"encoding the catalogue ({len(catalogue)} titles) with {name} ...", flush=True)
        vectors[name], catalogue_rate[name] = encode_all(encoders[name], catalogue)
    throughput["catalogue"] = {
        "rounds": 1,
        "fp32_texts_per_s": catalogue_rate["fp32"],
        "int8_texts_per_s": catalogue_rate["int8"],
        "ratio": catalogue_rate["int8"] / catalogue_rate["fp32"],
    }

    cosine = np.sum(vectors["fp32"] * vectors["int8"], axis=1)
    # Dynamic quantization scales activations per batch, so a text's int8 vector depends on the
    # texts that share its batch: compare each single title encoded alone with it inside a batch.
    alone_vs_batched = {}
    for name, encoder in encoders.items():
        alone = np.concatenate([encoder.encode_items([t]) for t in singles])
        in_batch = np.concatenate([encoder.encode_items(singles[i : i + 64]) for i in range(0, len(singles), 64)])
        same = np.sum(alone * in_batch, axis=1)
        alone_vs_batched[name] = {"cosine_mean": float(same.mean()), "cosine_min": float(same.min())}
    queries = rng.choice(len(catalogue), NEIGHBOUR_QUERIES, replace=False)
    counts, edges = np.histogram(cosine, bins=40)
    agreement = {
        "items": len(catalogue),
        "cosine_mean": float(cosine.mean()),
        "cosine_p1": float(np.percentile(cosine, 1)),
        "cosine_min": float(cosine.min()),
        "top10_neighbour_overlap": neighbour_overlap(vectors["fp32"], vectors["int8"], 10, queries),
        "neighbour_queries": NEIGHBOUR_QUERIES,
        "cosine_histogram": {"counts": counts.tolist(), "edges": edges.tolist()},
        "alone_vs_batch_of_64": alone_vs_batched,
    }

    print("zero-shot retrieval, warm split ...", flush=True)
    warm = zero_shot(vectors, warm_split(dataset))
    cold_runs = []
    for seed in range(args.cold_seeds):
        print(f"zero-shot retrieval, cold split seed {seed} ...", flush=True)
        cold_runs.append(zero_shot(vectors, cold_item_split(dataset, seed=seed)))
    cold = {
        "seeds": list(range(args.cold_seeds)),
        "per_seed": cold_runs,
        **{
            name: {m: float(np.mean([c[name][m] for c in cold_runs])) for m in ("ndcg@10", "recall@20")}
            for name in VARIANTS
        },
        "int8_minus_fp32_ndcg@10": float(np.mean([c["int8_minus_fp32_ndcg@10"] for c in cold_runs])),
        "int8_minus_fp32_ndcg@10_seed_spread": float(np.std([c["int8_minus_fp32_ndcg@10"] for c in cold_runs])),
    }

    result = {
        "command": "python bench/quantization.py " + " ".join(sys.argv[1:]),
        "model": "all-MiniLM-L6-v2 (packaged)",
        "threads": args.threads,
        "texts": args.texts,
        "singles": args.singles,
        "throughput": throughput,
        "agreement": agreement,
        "offline": {"warm": warm, "cold": cold},
    }
    path = write_results("quantization", result)
    plot(result, path.with_suffix(".png"))

    print(f"\nthroughput, texts/s ({args.threads} torch thread(s); median of {args.rounds} alternating rounds)")
    print(f"{'':<26} {'fp32':>8} {'int8':>8} {'int8/fp32':>10}")
    for label, key in (("batches of 64", "batch64"), ("single texts", "single"), ("catalogue (1 pass)", "catalogue")):
        t = throughput[key]
        print(f"{label:<26} {t['fp32_texts_per_s']:8.0f} {t['int8_texts_per_s']:8.0f} {t['ratio']:9.2f}x")
    a = agreement
    print(
        f"\nagreement over {a['items']} items: cosine mean {a['cosine_mean']:.4f}, 1st percentile "
        f"{a['cosine_p1']:.4f}, min {a['cosine_min']:.4f}; top-10 neighbour overlap {a['top10_neighbour_overlap']:.3f}"
    )
    for name, same in alone_vs_batched.items():
        print(
            f"{name}: the same title alone vs in a batch of 64: cosine mean {same['cosine_mean']:.4f}, "
            f"min {same['cosine_min']:.4f}"
        )
    print(f"\nzero-shot {'':<21} {'fp32':>8} {'int8':>8} {'int8-fp32 (SE)':>20}")
    print(
        f"{'warm NDCG@10':<31} {warm['fp32']['ndcg@10']:8.4f} {warm['int8']['ndcg@10']:8.4f} "
        f"{warm['int8_minus_fp32_ndcg@10']:+10.4f} ({warm['int8_minus_fp32_ndcg@10_se']:.4f})"
    )
    print(
        f"{'cold NDCG@10, mean of ' + str(args.cold_seeds) + ' seeds':<31} {cold['fp32']['ndcg@10']:8.4f} "
        f"{cold['int8']['ndcg@10']:8.4f} {cold['int8_minus_fp32_ndcg@10']:+10.4f} "
        f"(seed spread {cold['int8_minus_fp32_ndcg@10_seed_spread']:.4f})"
    )
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
