"""Service benchmark on the demo catalogue: start-up, ingestion, Recommend latency, encode vs in-process.

    python bench/service.py [--rounds 3] [--texts 2048]

Prints a table, writes bench/results/service.json and service.png. Encode throughput through the
service (SDK -> gRPC -> Ray pool -> replicas) is compared with in-process sentence-transformers
on the same texts, the two measured in alternating rounds of one run; the ratio is the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, ServedBertrec, percentiles_ms, write_results  # noqa: E402


def demo_texts(n: int) -> list[str]:
    from bertrec.movielens import bundled_path, read_movies

    titles = [m.text for m in read_movies(bundled_path())]
    return [titles[i % len(titles)] for i in range(n)]


def in_process_rate(model, texts: list[str]) -> float:
    began = time.perf_counter()
    model.encode(texts, batch_size=64)
    return len(texts) / (time.perf_counter() - began)


async def service_rate_single(target: str, texts: list[str], callers: int) -> float:
    """`callers` concurrent callers, each sending one text per request until all are done."""
    from bertrec.client import AsyncClient

    queue = list(reversed(texts))
    async with AsyncClient(target, timeout_s=120) as client:
        await client.encode(["warm-up"])

        async def caller():
            while queue:
                await client.encode([queue.pop()])

        began = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        return len(texts) / (time.perf_counter() - began)


async def service_rate_batched(target: str, texts: list[str], batch: int, callers: int) -> float:
    from bertrec.client import AsyncClient

    batches = [texts[i : i + batch] for i in range(0, len(texts), batch)][::-1]
    async with AsyncClient(target, timeout_s=120) as client:

        async def caller():
            while batches:
                await client.encode(batches.pop())

        began = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        return len(texts) / (time.perf_counter() - began)


async def recommend_latency(target: str, users: list[str], concurrency: int, requests: int) -> dict:
    from bertrec.client import AsyncClient

    latencies: list[float] = []
    todo = [users[i % len(users)] for i in range(requests)][::-1]
    async with AsyncClient(target, timeout_s=60) as client:

        async def caller():
            while todo:
                user = todo.pop()
                began = time.perf_counter()
                results = [r async for r in client.recommend(user, k=10)]
                latencies.append(time.perf_counter() - began)
                assert len(results) == 10

        began = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return {"concurrency": concurrency, "requests": requests, "rps": requests / elapsed, **percentiles_ms(latencies)}


def ingest_rate(target: str, n: int) -> float:
    from bertrec.client import Client, Item

    texts = demo_texts(n)
    items = [Item(10_000_000 + i, f"{t} — director's cut {i}") for i, t in enumerate(texts)]
    with Client(target, timeout_s=600) as client:
        began = time.perf_counter()
        summary = client.upsert_items(items, batch_size=256)
        elapsed = time.perf_counter() - began
        assert summary.inserted == n
        client.delete_items([i.id for i in items])
    return n / elapsed


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    enc = result["encode"]
    labels = ["in-process\nsentence-transformers", "service, 32 callers\n1 text each", "service, batches\nof 64"]
    values = [enc["in_process_texts_per_s"], enc["service_single_texts_per_s"], enc["service_batched_texts_per_s"]]
    left.bar(labels, values, color=["#888", "#3a7", "#37a"])
    left.set_ylabel("texts / s (median of rounds)")
    left.set_title("Encode throughput, same texts, same run")
    for i, v in enumerate(values):
        left.text(i, v, f"{v:.0f}" + ("" if i == 0 else f"\n({v / values[0]:.2f}x)"), ha="center", va="bottom")
    recs = result["recommend"]
    xs = [str(r["concurrency"]) for r in recs]
    right.bar([x + "\np50" for x in xs], [r["p50_ms"] for r in recs], color="#3a7")
    right.bar([x + "\np99" for x in xs], [r["p99_ms"] for r in recs], color="#a73")
    right.set_ylabel("ms")
    right.set_title("Recommend latency (demo catalogue, k=10) by concurrency")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--texts", type=int, default=2048)
    parser.add_argument("--ingest", type=int, default=2000)
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from bertrec.workers.encoder import default_model_path

    log_path = RESULTS / "service-server.log"
    log_path.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        server = ServedBertrec(data, log=log_path)
        cold_start_s = server.started_s
        server.stop()
        server = ServedBertrec(data, log=log_path)
        warm_start_s = server.started_s
        try:
            texts = demo_texts(args.texts)
            torch.set_num_threads(2)
            model = SentenceTransformer(default_model_path(), device="cpu")
            model.encode(texts[:64])
            rounds = {"in_process": [], "single": [], "batched": []}
            for _ in range(args.rounds):  # alternate so machine noise hits both sides alike
                rounds["in_process"].append(in_process_rate(model, texts))
                rounds["single"].append(asyncio.run(service_rate_single(server.target, texts, 32)))
                rounds["batched"].append(asyncio.run(service_rate_batched(server.target, texts, 64, 2)))
            med = {k: statistics.median(v) for k, v in rounds.items()}
            users = [str(u) for u in range(1, 611)]
            asyncio.run(recommend_latency(server.target, users, 8, 610))  # warm the user cache
            recommend = [asyncio.run(recommend_latency(server.target, users, c, 600)) for c in (1, 8)]
            ingest = ingest_rate(server.target, args.ingest)
        finally:
            server.stop()

    result = {
        "command": "python bench/service.py " + " ".join(sys.argv[1:]),
        "startup": {"cold_start_s": cold_start_s, "warm_restart_s": warm_start_s},
        "ingest_items_per_s": ingest,
        "encode": {
            "texts": args.texts,
            "rounds": rounds,
            "in_process_texts_per_s": med["in_process"],
            "service_single_texts_per_s": med["single"],
            "service_batched_texts_per_s": med["batched"],
            "ratio_single_32_callers": med["single"] / med["in_process"],
            "ratio_batched": med["batched"] / med["in_process"],
        },
        "recommend": recommend,
    }
    path = write_results("service", result)
    plot(result, path.with_suffix(".png"))
    print(f"start-up: cold (demo ingest + encode 9742 items) {cold_start_s:.1f}s, warm restart {warm_start_s:.1f}s")
    print(f"ingest (UpsertItems, new text): {ingest:.0f} items/s")
    print(f"encode in-process sentence-transformers: {med['in_process']:.0f} texts/s")
    print(
        f"encode via service, 32 callers x 1 text: {med['single']:.0f} texts/s "
        f"({result['encode']['ratio_single_32_callers']:.2f}x)"
    )
    print(
        f"encode via service, batches of 64:       {med['batched']:.0f} texts/s "
        f"({result['encode']['ratio_batched']:.2f}x)"
    )
    print(f"{'concurrency':>11} {'rps':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for r in recommend:
        print(f"{r['concurrency']:>11} {r['rps']:7.1f} {r['p50_ms']:8.1f} {r['p95_ms']:8.1f} {r['p99_ms']:8.1f}")
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
