"""Load and soak: a mixed load on the demo service for a while, with memory sampled throughout.

    python bench/load.py [--duration 600] [--clients 8] [--mix recommend=0.8,rerank=0.2] [--out NAME] [--quick]

Serves the bundled MovieLens-small demo (`bertrec serve`, local Ray, defaults) in its own
process, then runs `--clients` SDK callers (recommend 60%, rerank 20%, upsert 10%,
interactions 10%; bench/loadgen.py, which checks every answer) for `--duration` seconds. Every
`--sample-s` it records the resident memory of the server process and everything under it (its
local Ray: GCS, raylet, encoder replicas) and the calls of that window. Prints a table, writes
bench/results/load.json and load.png (memory and throughput over time).

"Flat" memory is judged on the second half of the run (after warm-up: caches filled, the
allocator settled): the slope of total RSS there, in MB per minute, is the figure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, ServedBertrec, process_tree, write_results  # noqa: E402
from bench.loadgen import LoadGenerator  # noqa: E402


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def memory(server_pid: int) -> dict[str, float]:
    tree = process_tree(server_pid)
    return {"server_mb": round(rss_mb(server_pid), 1), "total_mb": round(sum(rss_mb(p) for p in tree), 1)}


def slope_mb_per_min(samples: list[dict]) -> float:
    """Least-squares slope of total RSS over the second half of the samples."""
    half = samples[len(samples) // 2 :]
    if len(half) < 2:
        return 0.0
    xs = [s["t_s"] / 60 for s in half]
    ys = [s["total_mb"] for s in half]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


def plot(samples: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_s"] / 60 for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot(t, [s["total_mb"] for s in samples], label="server + its Ray (sum of RSS)")
    top.plot(t, [s["server_mb"] for s in samples], label="server process")
    top.set_ylabel("resident memory, MB")
    top.set_ylim(bottom=0)
    top.legend()
    bottom.plot(t, [s["ok_per_s"] for s in samples], label="OK calls/s")
    bottom.plot(t, [s["errors"] for s in samples], label="failed calls in window")
    bottom.set_xlabel("minutes under load")
    bottom.legend()
    fig.suptitle("bertrec under a mixed load (demo catalogue)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds under load")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="60 s, sampled every 5 s")
    parser.add_argument(
        "--mix",
        default="recommend=0.6,rerank=0.2,upsert=0.1,interact=0.1",
        help="operation=share,...; without upsert/interact the catalogue stays the same size",
    )
    parser.add_argument("--out", default="load", help="result name: bench/results/<out>.json and .png")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.sample_s = 60.0, 5.0

    from bertrec.movielens import bundled_path, read_movies, read_ratings

    folder = bundled_path()
    item_ids = [m.id for m in read_movies(folder)]
    users = sorted({r.user_id for r in read_ratings(folder)})
    with tempfile.TemporaryDirectory() as tmp:
        print("starting the demo service (encodes the catalogue on first start) ...", flush=True)
        server = ServedBertrec(Path(tmp) / "data")
        try:
            mix = {op: float(share) for op, share in (part.split("=") for part in args.mix.split(","))}
            load = LoadGenerator(server.target, users, item_ids, clients=args.clients, mix=mix, max_retries=0)
            samples = [{"t_s": 0.0, **memory(server.proc.pid), "ok_per_s": 0.0, "errors": 0}]
            load.start()
            began = time.monotonic()
            while (elapsed := time.monotonic() - began) < args.duration:
                time.sleep(min(args.sample_s, args.duration - elapsed))
                now = load.now()
                window = load.statuses(since_s=now - args.sample_s, until_s=now)
                samples.append(
                    {
                        "t_s": round(now, 1),
                        **memory(server.proc.pid),
                        "ok_per_s": round(window.get("OK", 0) / args.sample_s, 1),
                        "errors": sum(n for status, n in window.items() if status != "OK"),
                    }
                )
                print(f"  {now:6.0f}s  {samples[-1]}", flush=True)
            load.stop()
        finally:
            server.stop()
    summary = load.summary()
    slope = slope_mb_per_min(samples)
    print(f"\n{'operation':<10} {'calls':>7} {'OK/s':>7} {'p50 ms':>8} {'p99 ms':>8}  statuses")
    for op, row in [*summary["by_op"].items(), ("all", summary["all"])]:
        latency = f"{row['p50_ms']!s:>8} {row['p99_ms']!s:>8}"
        print(f"{op:<10} {row['calls']:>7} {row['ok_per_s']:>7} {latency}  {row['statuses']}")
    print(f"wrong answers: {summary['wrong_answers']}")
    start, warm, end = (samples[i]["total_mb"] for i in (0, len(samples) // 2, -1))
    print(
        f"memory: start {start:.0f} MB, mid-run {warm:.0f} MB, end {end:.0f} MB; second-half slope {slope:+.2f} MB/min"
    )
    path = write_results(
        args.out,
        {
            "command": " ".join(["python bench/load.py", *sys.argv[1:]]),
            "duration_s": args.duration,
            "clients": args.clients,
            "mix": args.mix,
            "summary": summary,
            "memory_slope_mb_per_min_second_half": round(slope, 3),
            "samples": samples,
        },
    )
    plot(samples, RESULTS / f"{args.out}.png")
    print(f"wrote {path} and {RESULTS / args.out}.png")


if __name__ == "__main__":
    main()
