"""Index benchmark: exact vs IVF vs HNSW vs IVF-PQ through FaissIndex at 100k and 1M items.

    python bench/index.py [--sizes 100000,1000000] [--queries 1000] [--quick]

For each catalogue size, every index is built through bertrec's own `FaissIndex`
(workers/index.py) from the factory string the server would be configured with, next to raw
faiss exact search (`IndexFlatIP`) as the baseline of the same run. Figures per index: build
time (training included), memory (bytes of the `FaissIndex.save` snapshot, and the RSS growth
of this process while the index is held), QPS at batch 1 and batch 64, and recall@10 against
exact search. nprobe (IVF) and efSearch (HNSW) are swept to draw recall-vs-QPS curves; for
each index the cheapest setting reaching recall@10 >= 0.95 is reported with its speed-up over
the raw exact baseline (target: at 1M items, some approximate index at >= 5x). Each index is
measured in two modes: `top10`, the index's own 10 nearest neighbours; and `pool200`, what
Recommend does with the default `candidate_pool_size`: fetch 200 neighbours, re-score them
exactly against the stored vectors and keep the best 10 (`--pool`; HNSW then searches with
max(efSearch, 200), so its sweep starts there). Each sweep includes the value IndexConfig's
default (auto: from the index size, `auto_nprobe` / `auto_ef_search` in workers/index.py) picks
at that size, marked `*`. Prints a table, writes bench/results/index.json and index.png
(`--out NAME`: NAME.json / .png; `--quick`: index-quick.json / .png, 20k items, for a smoke run).

Catalogue. Uniform random vectors would mislead (IVF and HNSW recall collapses on them), so
the catalogue is drawn around real item vectors:

1. The 9,742 bundled MovieLens titles are encoded with the packaged encoder (`BertEncoder`,
   all-MiniLM-L6-v2, CPU, `encode_items`); the vectors are cached in bench/results/cache/.
2. For each real vector r_b, d_b = the distance to its nearest other real vector (exact;
   duplicate titles are floored at the 5th percentile of d).
3. A synthetic item is x = normalise(r_b + s * d_b * g), with b drawn evenly over the real
   items (each gets N / 9,742 copies, in shuffled order) and g Gaussian with the covariance of
   the real vectors, scaled to unit expected norm, so the noise stays in the directions real
   embeddings use. One scalar s is calibrated so that the median distance ||x - r_b|| equals
   the median of d: an item lies about as far from its parent as the parent lies from its
   nearest real neighbour.

Queries, none of them a catalogue member, half of each kind:

- perturbed: fresh draws of step 3 (a new item that is not in the index);
- user: what Recommend sends for a known user. A random MovieLens user's history is cut at a
  random point, its last 50 interactions (`max_history`) are mapped to catalogue copies of
  those movies, and the server's own `pool_history` (recency-weighted mean of the liked items,
  half-life 20) turns them into the query vector.

Build: IVF uses nlist = the power of two nearest to 4 * sqrt(N) and is trained on its first
`add` (40 vectors per list, `--train-per-list`; 0 trains on the whole catalogue in one `add`,
as the server's rebuild does), then the rest is added in chunks of 100k. IVF-PQ is
`IVF<nlist>,PQ48np` (48 bytes per vector; `np` skips faiss's polysemous training, which search
never uses and which alone took minutes on 2 cores). HNSW is HNSW32 with faiss's default
efConstruction 40. Timing: per setting a warm-up, then `--rounds` rounds of at least `--time-s`
each (and at least 10 queries), median QPS. Batch 1 is one query per `search` call, batch 64
one call per 64 queries, on faiss's OpenMP threads (`--threads`; all cores by default). The
raw exact baseline is re-timed between index families and the median of all its rounds is used.
Run it on an otherwise idle machine: with the cores busy, OpenMP synchronisation dominates
single-query searches (measured here: exact batch-1 search 15x slower on 2 threads than on 1).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, write_results  # noqa: E402

CACHE = RESULTS / "cache"
K = 10
TARGET_RECALL = 0.95
TARGET_SPEEDUP = 5.0
ADD_CHUNK = 100_000
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
EF_SEARCHES = (16, 32, 64, 128, 256, 512, 1024)


# ---------------------------------------------------------------- real vectors


def real_vectors() -> tuple[np.ndarray, np.ndarray]:
    """(movie ids, L2-normalised vectors) of the bundled titles, encoded once and cached."""
    from bertrec.movielens import bundled_path, read_movies
    from bertrec.workers.encoder import BertEncoder, default_model_path

    movies = list(read_movies(bundled_path()))
    texts = [m.text for m in movies]
    key = hashlib.sha1(("all-MiniLM-L6-v2\n" + "\n".join(texts)).encode()).hexdigest()[:12]
    path = CACHE / f"movielens-minilm-{key}.npy"
    if path.exists():
        vectors = np.load(path)
    else:
        began = time.perf_counter()
        vectors = BertEncoder(default_model_path(), "cpu").encode_items(texts)
        print(f"encoded {len(texts)} titles in {time.perf_counter() - began:.0f}s -> {path}")
        CACHE.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
    return np.array([m.id for m in movies], np.int64), vectors.astype(np.float32)


def nearest_real_distance(real: np.ndarray) -> np.ndarray:
    """Distance from each real vector to its nearest other real vector (exact)."""
    import faiss

    flat = faiss.IndexFlatIP(real.shape[1])
    flat.add(real)
    scores, _ = flat.search(real, 2)
    d = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * scores[:, 1]))
    return np.maximum(d, np.percentile(d, 5)).astype(np.float32)


class Catalogue:
    """Synthetic items around the real vectors (recipe in the module docstring)."""

    def __init__(self, real: np.ndarray, seed: int = 0):
        self.real = real
        self.nn = nearest_real_distance(real)
        centred = real - real.mean(0)
        eigvals, eigvecs = np.linalg.eigh(centred.T @ centred / len(real))
        eigvals = np.clip(eigvals, 0, None)
        # g = z @ shape has covariance proportional to the real one and unit expected norm.
        self._shape = (np.sqrt(eigvals / eigvals.sum())[:, None] * eigvecs.T).astype(np.float32)
        self.scale = 1.0
        rng = np.random.default_rng(seed + 1)
        probe = rng.integers(len(real), size=4000)
        for _ in range(4):  # normalisation shrinks the offset: calibrate the scale to it
            offset = np.linalg.norm(self.draw(probe, rng) - real[probe], axis=1)
            self.scale *= float(np.median(self.nn) / np.median(offset))
        self.parent_distance_median = float(np.median(np.linalg.norm(self.draw(probe, rng) - real[probe], axis=1)))

    def draw(self, bases: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noise = rng.standard_normal((len(bases), self.real.shape[1]), dtype=np.float32) @ self._shape
        x = self.real[bases] + (self.scale * self.nn[bases])[:, None] * noise
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def items(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(n x dim vectors, base of each), generated in chunks to keep memory flat."""
        rng = np.random.default_rng(seed)
        bases = rng.permutation(np.arange(n) % len(self.real))
        out = np.empty((n, self.real.shape[1]), np.float32)
        for start in range(0, n, ADD_CHUNK):
            out[start : start + ADD_CHUNK] = self.draw(bases[start : start + ADD_CHUNK], rng)
        return out, bases


def user_histories() -> list[list]:
    """Each MovieLens user's interactions, oldest first."""
    from bertrec.movielens import bundled_path, read_ratings

    by_user: dict[str, list] = {}
    for r in read_ratings(bundled_path()):
        by_user.setdefault(r.user_id, []).append(r)
    return [sorted(rows, key=lambda r: r.timestamp) for rows in by_user.values()]


def make_queries(
    catalogue: Catalogue,
    items: np.ndarray,
    bases: np.ndarray,
    movie_ids: np.ndarray,
    n: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """n query vectors (half perturbed, half user) and their kind (0 = perturbed, 1 = user)."""
    from bertrec.server.users import pool_history
    from bertrec.store import HistoryEntry

    rng = np.random.default_rng(seed)
    n_perturbed = n // 2
    perturbed = catalogue.draw(rng.integers(len(catalogue.real), size=n_perturbed), rng)
    order = np.argsort(bases, kind="stable")
    first = np.searchsorted(bases[order], np.arange(len(catalogue.real)))
    copies = np.bincount(bases, minlength=len(catalogue.real))
    row_of_movie = {int(m): i for i, m in enumerate(movie_ids)}
    histories = user_histories()
    users = []
    while len(users) < n - n_perturbed:
        history = histories[rng.integers(len(histories))]
        cut = int(rng.integers(1, len(history) + 1))
        entries, vectors = [], {}
        for r in history[max(0, cut - 50) : cut]:  # ServerConfig.max_history
            base = row_of_movie.get(r.item_id)
            if base is None or copies[base] == 0:
                continue
            item = int(order[first[base] + rng.integers(copies[base])])
            entries.append(HistoryEntry(item, r.timestamp, r.weight))
            vectors[item] = items[item]
        profile = pool_history(entries, vectors, 20.0, items.shape[1])  # ServerConfig.history_half_life
        if profile.vector is not None:
            users.append(profile.vector)
    queries = np.concatenate([perturbed, np.stack(users)]).astype(np.float32)
    kinds = np.repeat([0, 1], [n_perturbed, n - n_perturbed])
    return queries, kinds


# ---------------------------------------------------------------- measuring


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def release_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # return freed arenas, so RSS deltas mean something
    except (OSError, AttributeError):
        pass


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def timed_qps(search, queries: np.ndarray, batch: int, time_s: float, rounds: int) -> list[float]:
    """QPS per round; each round runs at least time_s and at least 10 queries, cycling the queries."""
    search(queries[:batch])  # warm-up
    results, pos = [], 0
    for _ in range(rounds):
        done, began = 0, time.perf_counter()
        while True:
            if pos + batch > len(queries):
                pos = 0
            search(queries[pos : pos + batch])
            pos += batch
            done += batch
            elapsed = time.perf_counter() - began
            if elapsed >= time_s and done >= 10:
                break
        results.append(done / elapsed)
    return results


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return np.array([len(np.intersect1d(f[f >= 0], t)) / truth.shape[1] for f, t in zip(found, truth)])


def search_all(search, queries: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate([search(queries[i : i + batch]) for i in range(0, len(queries), batch)])


def nlist_for(n: int) -> int:
    return int(2 ** round(np.log2(4 * np.sqrt(n))))


def families(n: int, pq_m: int) -> list[dict]:
    """Index families and their sweeps; `default` = what IndexConfig's auto setting picks at n items."""
    from bertrec.workers.index import auto_ef_search, auto_nprobe

    nlist = nlist_for(n)
    nprobe, ef_search = auto_nprobe(nlist, n), auto_ef_search(n)
    ivf = {"param": "nprobe", "values": sorted({p for p in NPROBES if p <= nlist} | {nprobe}), "default": nprobe}
    hnsw = {"param": "ef_search", "values": sorted({*EF_SEARCHES, ef_search}), "default": ef_search}
    return [
        {"name": "exact (FaissIndex)", "factory": "Flat", "param": None, "values": [None], "default": None},
        {"name": "IVF", "factory": f"IVF{nlist},Flat", **ivf},
        {"name": "HNSW", "factory": "HNSW32", **hnsw},
        # "np": no polysemous training; search never uses it and it alone took minutes on 2 cores.
        {"name": "IVF-PQ", "factory": f"IVF{nlist},PQ{pq_m}np", **ivf},
    ]


def build(factory: str, items: np.ndarray, train_per_list: int, use_gpu: str):
    """A FaissIndex over `items` (ids = row numbers), trained on its first add; seconds taken."""
    import faiss

    from bertrec.workers.index import FaissIndex

    began = time.perf_counter()
    index = FaissIndex(items.shape[1], factory, use_gpu=use_gpu)
    ivf = faiss.try_extract_index_ivf(faiss.index_factory(items.shape[1], factory, faiss.METRIC_INNER_PRODUCT))
    if ivf is None:
        first = min(len(items), ADD_CHUNK)
    elif train_per_list <= 0:
        first = len(items)  # the server's rebuild: one add, trained on everything
    else:
        first = min(len(items), train_per_list * ivf.nlist)
    index.add(np.arange(first, dtype=np.int64), items[:first])
    for start in range(first, len(items), ADD_CHUNK):
        stop = min(start + ADD_CHUNK, len(items))
        index.add(np.arange(start, stop, dtype=np.int64), items[start:stop])
    return index, time.perf_counter() - began


def set_search_param(index, param: str | None, value: int | None) -> None:
    """An explicit IndexConfig.nprobe / ef_search, as the server would apply it."""
    if param is not None:
        index.configure_search(**{param: value})


def modes(pool: int) -> list[tuple[str, int]]:
    """(mode, neighbours fetched): plain top-10, and Recommend's candidate pool + exact re-scoring."""
    return [("top10", K)] + ([(f"pool{pool}", pool)] if pool > K else [])


def mode_values(fam: dict, fetch: int) -> list:
    if fam["param"] == "ef_search":  # faiss HNSW searches with max(efSearch, k): lower values repeat
        return sorted({max(v, fetch) for v in fam["values"]})
    return fam["values"]


def is_default(fam: dict, fetch: int, value) -> bool:
    """Whether `value` is what the IndexConfig default searches with in this mode."""
    if fam["param"] is None:
        return False
    return value == (max(fam["default"], fetch) if fam["param"] == "ef_search" else fam["default"])


# ---------------------------------------------------------------- one catalogue size


def run_size(n: int, args, catalogue: Catalogue, movie_ids: np.ndarray) -> dict:
    import faiss

    from bertrec.workers.faiss_gpu import gpu_available

    began = time.perf_counter()
    items, bases = catalogue.items(n, seed=n)
    queries, kinds = make_queries(catalogue, items, bases, movie_ids, args.queries, seed=n + 1)
    print(
        f"\n== {n:,} items x {items.shape[1]} dims, {len(queries)} queries "
        f"(generated in {time.perf_counter() - began:.1f}s)"
    )

    # Raw faiss exact search: the ground truth and the speed baseline.
    release_memory()
    rss0 = rss_bytes()
    began = time.perf_counter()
    flat = faiss.IndexFlatIP(items.shape[1])
    flat.add(items)
    flat_build_s = time.perf_counter() - began
    flat_rss = rss_bytes() - rss0
    _, truth = flat.search(queries, K)
    _, nn_items = flat.search(items[: min(n, 1000)], 2)  # the catalogue's own nearest-neighbour distances
    nn_scores = np.einsum("ij,ij->i", items[: len(nn_items)], items[nn_items[:, 1]])
    with tempfile.TemporaryDirectory() as tmp:
        faiss.write_index(flat, f"{tmp}/flat.faiss")
        flat_bytes = os.path.getsize(f"{tmp}/flat.faiss")
    baseline = flat
    gpus = gpu_available(args.use_gpu)
    if gpus:  # time the baseline on the same device as the FaissIndex rows
        baseline = faiss.index_cpu_to_all_gpus(flat, ngpu=gpus)

    def raw_search(q, index=baseline):
        return index.search(q, K)[1]

    def rescored(q, found):
        """Recommend's exact re-scoring of the fetched candidates, keeping the best K."""
        scores = np.einsum("bkd,bd->bk", items[np.maximum(found, 0)], q)
        scores[found < 0] = -np.inf
        return np.take_along_axis(found, np.argsort(-scores, axis=1)[:, :K], axis=1)

    base_rounds: dict[int, list[float]] = {1: [], 64: []}

    def time_baseline(rounds: int) -> None:
        for b in (1, 64):
            base_rounds[b] += timed_qps(raw_search, queries, b, args.time_s, rounds)

    time_baseline(args.rounds)
    rows = []
    for fam in families(n, args.pq_m):
        release_memory()
        rss0 = rss_bytes()
        index, build_s = build(fam["factory"], items, args.train_per_list, args.use_gpu)
        release_memory()  # count what the index holds, not the build's freed temporaries
        rss_delta = rss_bytes() - rss0
        with tempfile.TemporaryDirectory() as tmp:
            index.save(Path(tmp), version=0)
            snapshot = folder_bytes(Path(tmp))
        print(
            f"built {fam['factory']:<16} in {build_s:7.1f}s  snapshot {snapshot / 2**20:8.1f} MiB  "
            f"RSS +{rss_delta / 2**20:8.1f} MiB  on {index.device}"
        )
        for mode, fetch in modes(args.pool):
            if fam["param"] is None and fetch != K:
                continue  # exact needs no re-scoring

            def product_search(q, index=index, fetch=fetch):
                found = index.search(q, fetch)[1]
                return found if fetch == K else rescored(q, found)

            for value in mode_values(fam, fetch):
                set_search_param(index, fam["param"], value)
                recall = recall_at_k(search_all(product_search, queries), truth)
                qps = {b: timed_qps(product_search, queries, b, args.time_s, args.rounds) for b in (1, 64)}
                row = {
                    "index": fam["name"],
                    "factory": fam["factory"],
                    "mode": mode,
                    "fetch": fetch,
                    "param": fam["param"],
                    "value": value,
                    "product_default": is_default(fam, fetch, value),
                    "device": index.device,
                    "build_s": build_s,
                    "snapshot_bytes": snapshot,
                    "rss_delta_bytes": rss_delta,
                    "recall_at_10": float(recall.mean()),
                    "recall_at_10_perturbed": float(recall[kinds == 0].mean()),
                    "recall_at_10_user": float(recall[kinds == 1].mean()),
                    "qps_batch1": statistics.median(qps[1]),
                    "qps_batch64": statistics.median(qps[64]),
                    "qps_rounds": {"batch1": qps[1], "batch64": qps[64]},
                }
                rows.append(row)
                print(
                    f"  {fam['name']:<18} {mode:<8} {fam['param'] or '':>9} {value if value is not None else '':>4}  "
                    f"recall@10 {row['recall_at_10']:.3f}  QPS b1 {row['qps_batch1']:9.1f}  "
                    f"b64 {row['qps_batch64']:9.1f}"
                )
        del index, product_search
        time_baseline(1)  # interleaved with the families, so drift hits both sides alike

    exact = {
        "index": "exact (raw faiss)",
        "factory": "IndexFlatIP",
        "device": "cuda" if gpus else "cpu",
        "build_s": flat_build_s,
        "snapshot_bytes": flat_bytes,
        "rss_delta_bytes": flat_rss,
        "recall_at_10": 1.0,
        "qps_batch1": statistics.median(base_rounds[1]),
        "qps_batch64": statistics.median(base_rounds[64]),
        "qps_rounds": {"batch1": base_rounds[1], "batch64": base_rounds[64]},
    }
    for row in rows:
        row["speedup_batch1"] = row["qps_batch1"] / exact["qps_batch1"]
        row["speedup_batch64"] = row["qps_batch64"] / exact["qps_batch64"]
    cheapest = []
    for fam in families(n, args.pq_m):
        for mode, _ in modes(args.pool):
            sweep = [r for r in rows if r["index"] == fam["name"] and r["mode"] == mode]
            if not sweep:
                continue
            # Sweep values grow with cost, so the first setting reaching the target is the cheapest.
            reaching = [r for r in sweep if r["recall_at_10"] >= TARGET_RECALL]
            cheapest.append(
                {
                    "index": fam["name"],
                    "factory": fam["factory"],
                    "mode": mode,
                    "row": reaching[0] if reaching else None,
                }
            )
    return {
        "items": n,
        "dim": int(queries.shape[1]),
        "queries": {"total": len(queries), "perturbed": int((kinds == 0).sum()), "user": int((kinds == 1).sum())},
        "ivf_nlist": nlist_for(n),
        "catalogue_nn_distance_median": float(np.median(np.sqrt(np.maximum(0, 2 - 2 * nn_scores)))),
        "exact": exact,
        "rows": rows,
        "cheapest_reaching_target": cheapest,
    }


# ---------------------------------------------------------------- output


def mib(b: int) -> str:
    return f"{b / 2**20:.1f}"


def setting(r: dict) -> str:
    return (f"{r['param']}={r['value']}" if r["param"] else "-") + ("*" if r.get("product_default") else "")


def print_tables(result: dict) -> None:
    for size in result["sizes"]:
        ex = size["exact"]
        print(f"\n{size['items']:,} items (IVF nlist {size['ivf_nlist']}), {size['queries']['total']} queries, k={K}")
        head = (
            f"{'index':<19} {'factory':<16} {'mode':<8} {'setting':<15} {'build s':>8} {'MiB':>8} {'RSS MiB':>8} "
            f"{'recall@10':>9} {'QPS b1':>9} {'QPS b64':>9} {'x b1':>7} {'x b64':>6}"
        )
        print(head)
        print("-" * len(head))
        print(
            f"{ex['index']:<19} {ex['factory']:<16} {'top10':<8} {'-':<15} {ex['build_s']:8.1f} "
            f"{mib(ex['snapshot_bytes']):>8} {mib(ex['rss_delta_bytes']):>8} {1.0:9.3f} {ex['qps_batch1']:9.1f} "
            f"{ex['qps_batch64']:9.1f} {1.0:7.2f} {1.0:6.2f}"
        )
        for r in size["rows"]:
            print(
                f"{r['index']:<19} {r['factory']:<16} {r['mode']:<8} {setting(r):<15} {r['build_s']:8.1f} "
                f"{mib(r['snapshot_bytes']):>8} {mib(r['rss_delta_bytes']):>8} {r['recall_at_10']:9.3f} "
                f"{r['qps_batch1']:9.1f} {r['qps_batch64']:9.1f} {r['speedup_batch1']:7.2f} {r['speedup_batch64']:6.2f}"
            )
        print(
            "* = IndexConfig default (auto at this size). x = QPS over raw faiss exact search in the same run. "
            "MiB = FaissIndex snapshot."
            "\npoolN = search N neighbours, re-score them exactly and keep 10, as Recommend does "
            "(candidate_pool_size)."
        )
        print(f"cheapest setting with recall@10 >= {TARGET_RECALL}:")
        for c in size["cheapest_reaching_target"]:
            r = c["row"]
            label = f"  {c['index']:<19} {c['mode']:<8}"
            if r is None:
                print(f"{label} none in the sweep")
            else:
                print(
                    f"{label} {setting(r):<15} recall@10 {r['recall_at_10']:.3f}  "
                    f"{r['speedup_batch1']:6.2f}x at batch 1, {r['speedup_batch64']:6.2f}x at batch 64"
                )
        print("IndexConfig default (auto at this size):")
        for r in (r for r in size["rows"] if r["product_default"]):
            print(
                f"  {r['index']:<19} {r['mode']:<8} {setting(r):<15} recall@10 {r['recall_at_10']:.3f}  "
                f"{r['speedup_batch1']:6.2f}x at batch 1, {r['speedup_batch64']:6.2f}x at batch 64"
            )
    t = result["target"]
    print(
        f"\ntarget at {t['items']:,} items (recall@10 >= {TARGET_RECALL} at >= {TARGET_SPEEDUP:g}x exact QPS): "
        f"batch 1 {'met' if t['met_batch1'] else 'NOT met'} (best: {t['best_batch1'] or 'none'}), "
        f"batch 64 {'met' if t['met_batch64'] else 'NOT met'} (best: {t['best_batch64'] or 'none'})"
    )


def target(size: dict) -> dict:
    out: dict = {"items": size["items"]}
    candidates = [c["row"] for c in size["cheapest_reaching_target"] if c["row"] and c["row"]["param"]]
    for b in ("batch1", "batch64"):
        top = max(candidates, key=lambda r: r[f"speedup_{b}"], default=None)
        out[f"met_{b}"] = bool(top and top[f"speedup_{b}"] >= TARGET_SPEEDUP)
        out[f"best_{b}"] = (
            f"{top['factory']} {top['mode']} {setting(top)} recall@10 {top['recall_at_10']:.3f}, "
            f"{top[f'speedup_{b}']:.1f}x"
            if top
            else None
        )
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = result["sizes"]
    fig, axes = plt.subplots(len(sizes), 2, figsize=(13, 4.6 * len(sizes)), squeeze=False)
    colours = {"exact (FaissIndex)": "#555", "IVF": "#37a", "HNSW": "#3a7", "IVF-PQ": "#a73"}
    for row_axes, size in zip(axes, sizes):
        for ax, b, label in zip(row_axes, ("batch1", "batch64"), ("batch 1", "batch 64")):
            ex = size["exact"][f"qps_{b}"]
            for name, colour in colours.items():
                for mode in dict.fromkeys(r["mode"] for r in size["rows"]):
                    rows = [r for r in size["rows"] if r["index"] == name and r["mode"] == mode]
                    if not rows:
                        continue
                    ax.plot(
                        [r["recall_at_10"] for r in rows],
                        [r[f"qps_{b}"] for r in rows],
                        "o-" if mode == "top10" else "s--",
                        color=colour,
                        markersize=4,
                        label=f"{name} {rows[0]['factory']}, {mode}",
                    )
                    for r in rows:
                        if r["param"]:
                            ax.annotate(
                                str(r["value"]),
                                (r["recall_at_10"], r[f"qps_{b}"]),
                                fontsize=6,
                                xytext=(3, 3),
                                textcoords="offset points",
                            )
            ax.plot([1.0], [ex], "k*", markersize=12, label="exact, raw faiss (baseline)")
            ax.axhline(TARGET_SPEEDUP * ex, color="#c33", ls="--", lw=1, label=f"{TARGET_SPEEDUP:g}x exact")
            ax.axvline(TARGET_RECALL, color="#c33", ls=":", lw=1)
            ax.set_yscale("log")
            ax.set_xlim(0.45, 1.01)  # lower recall is of no use; those points fall off the left edge
            ax.set_xlabel("recall@10 vs exact")
            ax.set_ylabel("queries / s")
            ax.set_title(f"{size['items']:,} items, {label}")
            ax.grid(alpha=0.3, which="both")
        row_axes[0].legend(fontsize=6, loc="lower left")
    fig.suptitle("Recall vs QPS through FaissIndex (point labels: nprobe / efSearch)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="catalogue sizes, comma-separated")
    parser.add_argument("--queries", type=int, default=1000, help="query vectors (half perturbed, half user)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20k items, 200 queries, short timings")
    parser.add_argument("--out", default="", help="result name (default index, or index-quick)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per setting (median)")
    parser.add_argument("--time-s", type=float, default=1.0, help="least seconds per timed round")
    parser.add_argument("--pool", type=int, default=200, help="Recommend's candidate pool; 0 = top-10 only")
    parser.add_argument("--pq-m", type=int, default=48, help="PQ sub-quantisers (bytes per vector) of IVF-PQ")
    parser.add_argument("--train-per-list", type=int, default=40, help="IVF training vectors per list; 0 = all")
    parser.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads; 0 = faiss default (all)")
    parser.add_argument("--use-gpu", default="no", choices=["no", "auto"], help="IndexConfig.use_gpu for FaissIndex")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.queries, args.rounds, args.time_s = "20000", min(args.queries, 200), 2, 0.25
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    movie_ids, real = real_vectors()
    catalogue = Catalogue(real)
    print(
        f"real vectors: {len(real)} x {real.shape[1]}; median nearest-real distance {np.median(catalogue.nn):.3f}, "
        f"noise scale {catalogue.scale:.3f}, median item-to-parent distance {catalogue.parent_distance_median:.3f}"
    )
    result = {
        "command": "python bench/index.py " + " ".join(sys.argv[1:]),
        "faiss": faiss.__version__,
        "faiss_threads": faiss.omp_get_max_threads(),
        "k": K,
        "settings": dict(vars(args)),
        "real_vectors": {
            "count": len(real),
            "nn_distance_median": float(np.median(catalogue.nn)),
            "noise_scale": catalogue.scale,
            "item_to_parent_distance_median": catalogue.parent_distance_median,
        },
        "sizes": [run_size(n, args, catalogue, movie_ids) for n in sizes],
    }
    result["target"] = target(result["sizes"][-1])
    path = write_results(args.out or ("index-quick" if args.quick else "index"), result)
    plot(result, path.with_suffix(".png"))
    print_tables(result)
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
