"""Recommend benchmark: latency, throughput, stage shares and memory through the real service, 10k to 1M items.

    python bench/recommend.py [--sizes 10000,100000,1000000] [--concurrency 1,8,32] [--requests 600]
                              [--rounds 3] [--replicas 2,1] [--replica-size N] [--users 300] [--index Flat]
                              [--use-gpu no] [--quick]

Catalogue. For each size a fresh data dir is filled straight through the store API
(`SQLiteStore.upsert_items`) with items and their vectors, stored under the fingerprint
`ServiceState` computes for the packaged fp32 model, so `bertrec serve` finds every vector and
encodes nothing: 1M items need no BERT. Vectors are drawn around the 9,742 real MovieLens title
embeddings as in bench/index.py (`Catalogue`), not uniformly; item i's text is its parent's title
plus " #i". Users (`--users`): each a real MovieLens user's liked movies mapped to a random
catalogue copy of each, the 20-50 most recent of them, recorded as interactions in the store.

Service. `bertrec serve` (local Ray, the first `--replicas` value, `--index`) on that data dir.
Every user is asked once (the user cache is warm from then on), then `--rounds` rounds of
`--requests` Recommend calls (k=10, exclude-seen on, known users) at each `--concurrency`, the
levels interleaved within each round, over one gRPC channel; a level's figures pool its rounds
(each round's p99 is kept too: on a shared machine they spread by +-20%). Per call: the
end-to-end latency at the client and the server's `server-timing` trailer (per-stage ms, see
bertrec/stages.py), read through the generated stub because the SDK does not expose trailers.
Stage shares are mean stage ms over mean end-to-end ms. Recommend marks `user` (building a user
vector: absent for a warm user, whose cached profile is confirmed inside the search), `search`
(the FAISS search and, in its worker thread, the history-key check, dropping seen items and
reading the top k's vectors from SQLite), `rank` (the rest: ranking, explanations; `search` is
counted apart from it) and `stream`; "handler, no stage" is the handler's time in no stage (decode,
validation, the interceptor); "outside handler" is end-to-end minus the handler's total (gRPC
transport, protobuf, the client's event loop). gRPC + pool overhead = end-to-end minus the stages
= those two together (no encoder-pool call is on this path for known users).

Baseline of the same run: the same work in-process, without gRPC, asyncio or SQLite: bertrec's
`FaissIndex` (same factory; with `--use-gpu auto` it and the server's index are on the GPU) over
the same vectors, batch 1, the same user vectors (`pool_history`), fetch pool + seen, drop seen,
exact re-scoring of the 200-item pool, top 10, explanations; one round before each round of the
service's levels, pooled.

gRPC floor of the same run (bench/grpc_floor.py): a server that only answers, with the response
messages and trailers captured from one real call, driven like the service right after it at each
level and round (first `--replicas` value). Its end-to-end time is what Python gRPC alone costs a
call here (client and server), the part of the overhead no front-end code can remove; at
concurrency 1 the service's overhead minus the floor is bertrec's own front-end cost outside stages.

Scaling: p50/p99 at concurrency 8 and memory (RSS of the server process and of its descendants:
Ray's GCS, raylet and replica workers, read from /proc) versus size, and versus each `--replicas`
value at `--replica-size` (default: the middle size).

Prints tables, writes bench/results/recommend.json and recommend.png (`--quick`: recommend-quick.*,
2,000 and 5,000 items, 200 requests, 2 rounds, 100 users, a smoke run of about 2 minutes). The full default
run took about 14 minutes with one round per level; with the default 3 rounds it is estimated at
30-40 minutes on an idle 2-core machine, most of it exact search at 1M items, with about 11 GB of
memory at its peak and 4 GB in the temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import grpc_floor  # noqa: E402
from bench.common import RESULTS, ServedBertrec, percentiles_ms, write_results  # noqa: E402
from bench.index import Catalogue, real_vectors, user_histories  # noqa: E402
from bertrec.config import ServerConfig  # noqa: E402

K = 10
SERVER = ServerConfig()  # the served defaults: candidate pool 200, history half-life 20
WRITE_BATCH = 20_000  # items per store transaction: large executemany batches, bounded memory
MIN_LIKES, MAX_LIKES = 20, 50
TARGET_SIZE, TARGET_CONCURRENCY, TARGET_P99_MS, TARGET_OVERHEAD = 100_000, 8, 50.0, 0.20
OUTSIDE_STAGES, OUTSIDE_HANDLER = "handler, no stage", "outside handler"
STAGE_ORDER = ("user", "encode", "rank", "stream")  # in request order; unknown stages after these


# ---------------------------------------------------------------- data


def make_users(histories: list[list], movie_ids: np.ndarray, bases: np.ndarray, n_users: int, seed: int) -> dict:
    """user id -> liked history (HistoryEntry, oldest first) over catalogue item ids (row + 1)."""
    from bertrec.store import HistoryEntry

    rng = np.random.default_rng(seed)
    order = np.argsort(bases, kind="stable")
    first = np.searchsorted(bases[order], np.arange(len(movie_ids)))
    copies = np.bincount(bases, minlength=len(movie_ids))
    row_of_movie = {int(m): r for r, m in enumerate(movie_ids)}
    mapped = []  # per real user: (rating, parent row) of liked movies that have catalogue copies
    for history in histories:
        rows = [(r, row_of_movie.get(r.item_id, -1)) for r in history if r.weight > 0]
        rows = [(r, b) for r, b in rows if b >= 0 and copies[b]]
        if len(rows) >= MIN_LIKES:
            mapped.append(rows)
    if not mapped:
        raise SystemExit(f"no MovieLens user has {MIN_LIKES} liked movies in a catalogue this small")
    users = {}
    for u in range(n_users):
        rows = mapped[rng.integers(len(mapped))][-int(rng.integers(MIN_LIKES, MAX_LIKES + 1)) :]
        users[f"user-{u}"] = [
            HistoryEntry(int(order[first[b] + rng.integers(copies[b])]) + 1, r.timestamp, r.weight) for r, b in rows
        ]
    return users


def write_store(data: Path, vectors: np.ndarray, bases: np.ndarray, titles: list[str], users: dict) -> None:
    from tqdm import tqdm

    from bertrec.fingerprint import model_fingerprint
    from bertrec.store import SQLiteStore
    from bertrec.types import Interaction, Item
    from bertrec.workers.encoder import default_model_path

    # What ServiceState computes for the packaged fp32 model, so Catalog.open finds every vector.
    model = model_fingerprint(default_model_path())
    store = SQLiteStore(data)
    try:
        with tqdm(total=len(vectors), desc="writing catalogue", unit="item") as bar:
            for start in range(0, len(vectors), WRITE_BATCH):
                rows = range(start, min(start + WRITE_BATCH, len(vectors)))
                items = [Item(i + 1, f"{titles[bases[i]]} #{i + 1}") for i in rows]
                store.upsert_items(items, {i + 1: vectors[i] for i in rows}, model)
                bar.update(len(rows))
        store.record_interactions(
            [Interaction(user, e.item_id, e.timestamp, e.weight) for user, history in users.items() for e in history]
        )
    finally:
        store.close()


# ---------------------------------------------------------------- measuring


async def drive(target: str, requests: list, concurrency: int, tag: str) -> dict:
    """`concurrency` callers share `requests`: the latency and server-timing trailer of each call
    (`e2e_s`, `timings`) and the round's wall time (`elapsed_s`)."""
    import grpc

    from bertrec.server.observability import REQUEST_ID_KEY, TIMING_KEY, parse_server_timing
    from bertrec.v1 import recommender_pb2_grpc as pb_grpc

    todo = list(reversed(range(len(requests))))
    e2e_s: list[float] = []
    timings: list[dict[str, float]] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.RecommenderStub(channel)

        async def caller():
            while todo:
                i = todo.pop()
                began = time.perf_counter()
                call = stub.Recommend(requests[i], timeout=120, metadata=((REQUEST_ID_KEY, f"{tag}-{i}"),))
                got = sum([len(r.items) async for r in call])
                e2e_s.append(time.perf_counter() - began)
                timings.append(parse_server_timing((await call.trailing_metadata()).get(TIMING_KEY, "")))
                assert got == K, f"{got} results"

        began = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return {"e2e_s": e2e_s, "timings": timings, "elapsed_s": elapsed}


def summarise(concurrency: int, rounds: list[dict]) -> dict:
    """One concurrency level over its rounds: percentiles and stage shares of the pooled calls
    (a p99 from 600 calls is the 6th-worst alone), and each round's p99 to show the spread."""
    e2e_s = [s for r in rounds for s in r["e2e_s"]]
    timings = [t for r in rounds for t in r["timings"]]
    return {
        "concurrency": concurrency,
        "requests": len(e2e_s),
        "rounds": len(rounds),
        "rps": len(e2e_s) / sum(r["elapsed_s"] for r in rounds),
        **percentiles_ms(e2e_s),
        "round_p99_ms": [percentiles_ms(r["e2e_s"])["p99_ms"] for r in rounds],
        **stage_shares(e2e_s, timings),
    }


def floor_summary(rounds: list[dict], service: dict) -> dict:
    """The gRPC floor (bench/grpc_floor.py) at one concurrency, next to the service's figures at
    that level: its mean end-to-end as a share of the service's, and the service's overhead
    beyond it (meaningful at concurrency 1; under load the service's waits scale every part)."""
    e2e_s = [s for r in rounds for s in r["e2e_s"]]
    e2e_ms = 1000 * statistics.fmean(e2e_s)
    return {
        "requests": len(e2e_s),
        "rps": len(e2e_s) / sum(r["elapsed_s"] for r in rounds),
        "e2e_mean_ms": e2e_ms,
        **percentiles_ms(e2e_s),
        "share_of_service_e2e": e2e_ms / service["e2e_mean_ms"],
        "service_overhead_beyond_floor_ms": service["overhead_ms"] - e2e_ms,
    }


def stage_shares(e2e_s: list[float], timings: list[dict[str, float]]) -> dict:
    e2e_ms = 1000 * statistics.fmean(e2e_s)
    rank = {name: i for i, name in enumerate(STAGE_ORDER)}
    names = sorted({name for t in timings for name in t} - {"total"}, key=lambda n: (rank.get(n, len(rank)), n))
    parts = {name: statistics.fmean(t.get(name, 0.0) for t in timings) for name in names}
    handler_ms = statistics.fmean(t["total"] for t in timings)
    staged_ms = sum(parts.values())
    parts[OUTSIDE_STAGES] = handler_ms - staged_ms
    parts[OUTSIDE_HANDLER] = e2e_ms - handler_ms
    return {
        "e2e_mean_ms": e2e_ms,
        "handler_mean_ms": handler_ms,
        "parts_ms": parts,
        "shares": {name: ms / e2e_ms for name, ms in parts.items()},
        "overhead_ms": e2e_ms - staged_ms,
        "overhead_share": (e2e_ms - staged_ms) / e2e_ms,
    }


def tree_memory_mib(pid: int) -> dict:
    """RSS of `pid` and of all its descendants (Ray's processes), and `pid`'s peak RSS (VmHWM, which
    includes the index build), from /proc; zeros off Linux. Shared pages count in each process."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))

    def status(p: int) -> dict[str, float]:
        try:
            lines = Path(f"/proc/{p}/status").read_text().splitlines()
        except OSError:
            return {}
        fields = (line.partition(":") for line in lines)
        return {key: int(value.split()[0]) / 1024 for key, _, value in fields if key in ("VmRSS", "VmHWM")}

    descendants, stack = [], list(children.get(pid, []))
    while stack:
        p = stack.pop()
        descendants.append(p)
        stack += children.get(p, [])
    server = status(pid)
    ray_mib = sum(status(p).get("VmRSS", 0.0) for p in descendants)
    return {
        "server_rss_mib": server.get("VmRSS", 0.0),
        "server_peak_rss_mib": server.get("VmHWM", 0.0),
        "ray_rss_mib": ray_mib,
        "total_rss_mib": server.get("VmRSS", 0.0) + ray_mib,
        "ray_processes": len(descendants),
    }


class InProcess:
    """Recommend's arithmetic without gRPC, asyncio or SQLite, batch 1, on the same vectors. Timed
    in rounds alternating with the service's, so machine noise hits both alike."""

    def __init__(self, vectors: np.ndarray, users: dict, factory: str, use_gpu: str = "no"):
        from bertrec.server.users import pool_history
        from bertrec.workers.index import FaissIndex

        self.vectors = vectors
        self.index = FaissIndex(vectors.shape[1], factory, use_gpu=use_gpu)
        self.index.add(np.arange(1, len(vectors) + 1), vectors)
        self.profiles = []
        for history in users.values():
            seen = {e.item_id for e in history}
            by_id = {i: vectors[i - 1] for i in seen}
            self.profiles.append((pool_history(history, by_id, SERVER.history_half_life, vectors.shape[1]), seen))
        self.rounds: list[list[float]] = []
        for profile, seen in self.profiles[:10]:  # warm-up
            self.recommend(profile, seen)

    def recommend(self, profile, seen: set[int]) -> None:
        from bertrec.server.ranking import closest_history, order_by_score

        pool = SERVER.default_candidate_pool_size
        fetch = pool + min(len(seen), pool)  # as Recommend's first search
        _, found = self.index.search(profile.vector[None, :], fetch)
        ids = np.array([i for i in found[0].tolist() if i >= 0 and i not in seen][:pool])
        matrix = self.vectors[ids - 1]
        top = order_by_score(matrix @ profile.vector, ids)[:K]
        closest_history(matrix[top], profile.history_ids, profile.history_vectors)

    def round(self, n_requests: int) -> None:
        latencies = []
        for i in range(n_requests):
            began = time.perf_counter()
            self.recommend(*self.profiles[i % len(self.profiles)])
            latencies.append(time.perf_counter() - began)
        self.rounds.append(latencies)

    def summary(self) -> dict:
        pooled = [s for r in self.rounds for s in r]
        return {
            "requests": len(pooled),
            "rps": len(pooled) / sum(pooled),
            **percentiles_ms(pooled),
            "round_p50_ms": [percentiles_ms(r)["p50_ms"] for r in self.rounds],
        }


def run_size(n: int, args, catalogue: Catalogue, movie_ids: np.ndarray, titles: list[str], histories) -> dict:
    from bertrec import convert
    from bertrec.types import RecommendQuery, UserQuery

    vectors, bases = catalogue.items(n, seed=n)
    users = make_users(histories, movie_ids, bases, args.users, seed=n)
    in_process = InProcess(vectors, users, args.index, args.use_gpu)
    query = {u: convert.recommend_query_to_pb(RecommendQuery(UserQuery(user_id=u), k=K)) for u in users}
    warm = list(query.values())
    requests = [warm[i % len(warm)] for i in range(args.requests)]
    runs, memory = [], []
    with tempfile.TemporaryDirectory(prefix="bertrec-bench-recommend-") as tmp:
        data = Path(tmp) / "data"
        began = time.perf_counter()
        write_store(data, vectors, bases, titles, users)
        write_s = time.perf_counter() - began
        for position, replicas in enumerate(args.replicas if n == args.replica_size else args.replicas[:1]):
            # The first start builds the index from the stored vectors; later ones load its snapshot.
            # The first also runs every level, the in-process baseline and the gRPC floor.
            first = position == 0
            extra = ("--no-demo", "--replicas", str(replicas), "--index", args.index)
            with contextlib.ExitStack() as running:  # stops the floor, then the server, whatever happens
                server = ServedBertrec(data, *extra, log=args.log, env={"BERTREC_INDEX_USE_GPU": args.use_gpu})
                running.callback(server.stop)
                asyncio.run(drive(server.target, warm, 8, f"warm-{n}"))  # every user once: warm user cache
                floor = None
                if first:
                    sample = asyncio.run(grpc_floor.capture(server.target, warm[0]))
                    floor = grpc_floor.ServedFloor(grpc_floor.write_sample(Path(tmp) / "floor.json", sample))
                    running.callback(floor.stop)
                    asyncio.run(drive(floor.target, requests[:200], 8, f"floor-warm-{n}"))
                levels = args.concurrency if first else [TARGET_CONCURRENCY]
                rounds: dict[int, list[dict]] = {c: [] for c in levels}
                floor_rounds: dict[int, list[dict]] = {c: [] for c in levels}
                for r in range(args.rounds):  # levels interleaved, so a slow spell hits every level
                    if first:
                        in_process.round(args.requests)
                    for c in levels:
                        tag = f"n{n}-r{replicas}-c{c}-{r}"
                        rounds[c].append(asyncio.run(drive(server.target, requests, c, tag)))
                        if floor is not None:
                            floor_rounds[c].append(asyncio.run(drive(floor.target, requests, c, f"floor-{tag}")))
                level_runs = [{"replicas": replicas, **summarise(c, rounds[c])} for c in levels]
                if floor is not None:
                    for run in level_runs:
                        run["grpc_floor"] = floor_summary(floor_rounds[run["concurrency"]], run)
                runs += level_runs
                memory.append({"replicas": replicas, "start_s": server.started_s, **tree_memory_mib(server.proc.pid)})
    baseline = in_process.summary()
    lowest = min((r for r in runs if r["replicas"] == args.replicas[0]), key=lambda r: r["concurrency"])
    baseline["service_p50_over_in_process"] = lowest["p50_ms"] / baseline["p50_ms"]
    baseline["service_rps_over_in_process"] = lowest["rps"] / baseline["rps"]
    baseline["service_concurrency"] = lowest["concurrency"]
    return {
        "items": n,
        "users": len(users),
        "interactions": sum(len(h) for h in users.values()),
        "store_write_s": write_s,
        "runs": runs,
        "memory": memory,
        "in_process": baseline,
    }


# ---------------------------------------------------------------- reporting


def run_at(size: dict, replicas: int, concurrency: int) -> dict | None:
    return next((r for r in size["runs"] if r["replicas"] == replicas and r["concurrency"] == concurrency), None)


def target(result: dict) -> dict | None:
    size = next((s for s in result["sizes"] if s["items"] == TARGET_SIZE), None)
    run = size and run_at(size, result["settings"]["replicas"][0], TARGET_CONCURRENCY)
    if run is None:
        return None
    return {
        "items": TARGET_SIZE,
        "concurrency": TARGET_CONCURRENCY,
        "p99_ms": run["p99_ms"],
        "round_p99_ms": run.get("round_p99_ms", []),
        "p99_met": run["p99_ms"] <= TARGET_P99_MS,
        "overhead_share": run["overhead_share"],
        "overhead_met": run["overhead_share"] <= TARGET_OVERHEAD,
        "grpc_floor_share": {
            r["concurrency"]: r["grpc_floor"]["share_of_service_e2e"] for r in size["runs"] if "grpc_floor" in r
        },
    }


def print_tables(result: dict) -> None:
    print(f"\n{'items':>9} {'repl':>4} {'conc':>4} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7}")
    for s in result["sizes"]:
        for r in s["runs"]:
            print(
                f"{s['items']:>9} {r['replicas']:>4} {r['concurrency']:>4} {r['rps']:7.1f} "
                f"{r['p50_ms']:7.1f} {r['p95_ms']:7.1f} {r['p99_ms']:7.1f}"
            )
    parts = list(result["sizes"][0]["runs"][0]["parts_ms"])
    print("\nmean ms per stage (share of end-to-end); overhead = end-to-end minus the stages")
    print(f"{'items':>9} {'conc':>4} {'e2e':>6} " + " ".join(f"{p:>17}" for p in parts) + f" {'overhead':>9}")
    for s in result["sizes"]:
        for r in (r for r in s["runs"] if r["replicas"] == result["settings"]["replicas"][0]):
            cells = " ".join(f"{r['parts_ms'].get(p, 0):8.2f} ({r['shares'].get(p, 0):5.1%})".rjust(17) for p in parts)
            print(f"{s['items']:>9} {r['concurrency']:>4} {r['e2e_mean_ms']:6.2f} {cells} {r['overhead_share']:9.1%}")
    print("\ngRPC floor (bench/grpc_floor.py: a no-op Recommend server; same client, requests, response bytes)")
    print("    items conc  floor e2e ms  floor p99 ms  share of service e2e  service overhead ms  beyond floor ms")
    for s in result["sizes"]:
        for r in (r for r in s["runs"] if "grpc_floor" in r):
            f = r["grpc_floor"]
            beyond = f["service_overhead_beyond_floor_ms"]
            print(
                f"{s['items']:>9} {r['concurrency']:>4} {f['e2e_mean_ms']:13.2f} {f['p99_ms']:13.2f} "
                f"{f['share_of_service_e2e']:20.1%} {r['overhead_ms']:20.2f} {beyond:16.2f}"
            )
    print(f"\nin-process baseline (FaissIndex '{result['settings']['index']}', batch 1, same work without gRPC/SQLite)")
    print("    items  p50 ms  p99 ms    req/s  service p50 / in-proc  service rps / in-proc")
    for s in result["sizes"]:
        b = s["in_process"]
        print(
            f"{s['items']:>9} {b['p50_ms']:7.2f} {b['p99_ms']:7.2f} {b['rps']:8.1f} "
            f"{b['service_p50_over_in_process']:21.1f}x {b['service_rps_over_in_process']:21.2f}x"
        )
    print(f"\nscaling at concurrency {TARGET_CONCURRENCY}: latency and memory (RSS MiB: server, its Ray processes)")
    print("    items repl  p50 ms  p99 ms  server    peak     ray   total  start s")
    for s in result["sizes"]:
        for m in s["memory"]:
            r = run_at(s, m["replicas"], TARGET_CONCURRENCY) or {"p50_ms": float("nan"), "p99_ms": float("nan")}
            print(
                f"{s['items']:>9} {m['replicas']:>4} {r['p50_ms']:7.1f} {r['p99_ms']:7.1f} {m['server_rss_mib']:7.0f} "
                f"{m['server_peak_rss_mib']:7.0f} {m['ray_rss_mib']:7.0f} {m['total_rss_mib']:7.0f} {m['start_s']:8.1f}"
            )
    t = result["target"]
    if t:
        print(
            f"\ntarget at {t['items']} items, concurrency {t['concurrency']}: p99 {t['p99_ms']:.1f} ms "
            f"(rounds: {' / '.join(f'{p:.1f}' for p in t['round_p99_ms'])}) "
            f"(<= {TARGET_P99_MS:.0f}: {'met' if t['p99_met'] else 'NOT met'}), gRPC + pool overhead "
            f"{t['overhead_share']:.1%} (<= {TARGET_OVERHEAD:.0%}: {'met' if t['overhead_met'] else 'NOT met'})"
        )
        floors = ", ".join(f"concurrency {c}: {share:.1%}" for c, share in t["grpc_floor_share"].items())
        print(f"the gRPC floor alone, as a share of the service's end-to-end time: {floors}")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = result["settings"]["replicas"][0]
    sizes = result["sizes"]
    xs = [s["items"] for s in sizes]
    fig, (lat, share, mem) = plt.subplots(1, 3, figsize=(17, 4.8))
    for n, c in enumerate(result["settings"]["concurrency"]):
        runs = [run_at(s, first, c) for s in sizes]
        lat.plot(xs, [r["p50_ms"] for r in runs], "o-", color=f"C{n}", label=f"p50, concurrency {c}")
        lat.plot(xs, [r["p99_ms"] for r in runs], "s--", color=f"C{n}", label=f"p99, concurrency {c}")
    lat.plot(xs, [s["in_process"]["p50_ms"] for s in sizes], "k:", label="p50, in-process baseline")
    lat.axhline(TARGET_P99_MS, color="grey", lw=0.8)
    lat.set(xscale="log", yscale="log", xlabel="catalogue items", ylabel="ms", title="Recommend latency (k=10)")
    lat.legend(fontsize=7)
    bars = [(s, r) for s in sizes for r in s["runs"] if r["replicas"] == first]
    labels = [f"{s['items'] // 1000}k\nc={r['concurrency']}" for s, r in bars]
    bottom = np.zeros(len(bars))
    for n, part in enumerate(bars[0][1]["parts_ms"]):
        values = np.array([r["shares"].get(part, 0.0) for _, r in bars])
        share.bar(labels, values, bottom=bottom, label=part, color=f"C{n}")
        bottom += values
    floors = [
        (label, 1 - r["grpc_floor"]["share_of_service_e2e"]) for label, (_, r) in zip(labels, bars) if "grpc_floor" in r
    ]
    if floors:
        share.scatter(*zip(*floors), marker="_", s=500, color="k", label="gRPC floor: above the line")
    share.set(ylabel="share of end-to-end time", ylim=(0, 1.3), title="Where a Recommend call's time goes")
    share.tick_params(axis="x", labelsize=7)
    share.legend(fontsize=7, ncol=3, loc="upper center")
    for key, style in (("total_rss_mib", "o-"), ("server_rss_mib", "s--"), ("server_peak_rss_mib", "^:")):
        mem.plot(xs, [next(m for m in s["memory"] if m["replicas"] == first)[key] for s in sizes], style, label=key)
    for s in sizes:
        for m in s["memory"]:
            if m["replicas"] != first:
                mem.scatter([s["items"]], [m["total_rss_mib"]], marker="x", color="k")
                label = f"{m['replicas']} replica(s)"
                mem.annotate(label, (s["items"], m["total_rss_mib"]), xytext=(-60, 6), textcoords="offset points")
    mem.set(xscale="log", xlabel="catalogue items", ylabel="MiB", title=f"RSS, server + Ray ({first} replicas)")
    mem.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="catalogue sizes, comma-separated")
    parser.add_argument("--concurrency", default="1,8,32", help="concurrent callers, comma-separated")
    parser.add_argument("--requests", type=int, default=600, help="Recommend calls per concurrency level and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per concurrency level, pooled")
    parser.add_argument("--replicas", default="2,1", help="CPU encoder replicas; the first serves every size")
    parser.add_argument("--replica-size", type=int, default=0, help="size of the replica sweep (0 = middle size)")
    parser.add_argument("--users", type=int, default=300, help="synthetic users with 20-50 likes each")
    parser.add_argument("--index", default="Flat", help="FAISS factory string, for the server and the baseline")
    parser.add_argument(
        "--use-gpu", default="no", choices=["no", "auto"], help="index.use_gpu, for the server and the baseline"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 2k and 5k items, 200 requests, 100 users")
    parser.add_argument("--out", default="", help="result name (default recommend, or recommend-quick)")
    return parser


def main() -> int:
    args = build_parser().parse_args()
    if os.environ.get("BERTREC_MODEL_PATH") or os.environ.get("BERTREC_MODEL_QUANTIZE", "none") != "none":
        # The stored vectors are the packaged fp32 model's: another model would re-encode every item.
        raise SystemExit("unset BERTREC_MODEL_PATH / BERTREC_MODEL_QUANTIZE: the catalogue is pre-encoded")
    if args.quick:
        args.sizes, args.requests, args.users = "2000,5000", min(args.requests, 200), min(args.users, 100)
        args.rounds = min(args.rounds, 2)
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    args.replicas = [int(r) for r in args.replicas.split(",") if r.strip()]
    args.replica_size = args.replica_size or args.sizes[len(args.sizes) // 2]
    name = args.out or ("recommend-quick" if args.quick else "recommend")
    args.log = RESULTS / f"{name}-server.log"
    args.log.unlink(missing_ok=True)

    from bertrec.movielens import bundled_path, read_movies

    movie_ids, real = real_vectors()
    titles = [m.text for m in read_movies(bundled_path())]  # the order real_vectors encoded them in
    catalogue, histories = Catalogue(real), user_histories()
    settings = {k: v for k, v in vars(args).items() if k != "log"}
    result = {
        "command": "python bench/recommend.py " + " ".join(sys.argv[1:]),
        "settings": settings,
        "k": K,
        "sizes": [run_size(n, args, catalogue, movie_ids, titles, histories) for n in args.sizes],
    }
    result["target"] = target(result)
    path = write_results(name, result)
    plot(result, path.with_suffix(".png"))
    print_tables(result)
    print(f"wrote {path} and {path.with_suffix('.png')}; server log {args.log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
