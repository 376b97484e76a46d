"""Memory of building an index from the store: the catalogue in one batch vs the service's build.

The service builds its index at start-up from the on-disk store (`server/index_build.py`): vectors
go in in slices, and an index that trains (IVF, PQ) first learns from a uniform sample. The
baseline, measured in the same run, reads every stored vector into one array and adds it at once
(how the service built before). Each build runs in its own process, so peak RSS is its own.

    .venv/bin/python bench/index_build.py                       # 300k x 384 synthetic store
    .venv/bin/python bench/index_build.py --rows 1000000 --factories "Flat,IVF1024,Flat"
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_results  # noqa: E402

DIM = 384
MODEL = "m"


def make_store(folder: Path, rows: int) -> None:
    """Clustered unit vectors (real embeddings are clustered; IVF lists then differ in size)."""
    from bertrec.store.sqlite import SQLiteStore
    from bertrec.types import Item

    store = SQLiteStore(folder)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(200, DIM)).astype(np.float32)
    for start in range(0, rows, 50_000):
        n = min(50_000, rows - start)
        v = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.normal(size=(n, DIM)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        items = [Item(id=start + i + 1, text=f"item {start + i}") for i in range(n)]
        store.upsert_items(items, {it.id: x for it, x in zip(items, v)}, MODEL)
        print(f"store: {start + n:,} / {rows:,} vectors", flush=True)


def build(mode: str, folder: Path, factory: str) -> dict:
    """One build in this process: its peak RSS (imports included, the same for both modes), the
    RSS just before the build, and the time."""
    from bertrec.server.index_build import fill_index
    from bertrec.store.sqlite import SQLiteStore
    from bertrec.workers.index import FaissIndex

    store = SQLiteStore(folder)
    before = _current_rss_mib()
    index = FaissIndex(DIM, factory, use_gpu="no")
    began = time.perf_counter()
    if mode == "one batch":
        parts = list(store.iter_vectors(MODEL))
        index.add(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    else:
        fill_index(index, store, MODEL, factory, DIM)
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "mode": mode,
        "factory": factory,
        "vectors": len(index),
        "build_s": seconds,
        "rss_before_build_mib": before,
        "peak_rss_mib": peak,
    }


def _current_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--factories", default="Flat;IVF256,Flat;IVF256,PQ48", help="';'-separated factory strings")
    parser.add_argument("--store", help="an existing store folder from an earlier run (else a temporary one)")
    parser.add_argument("--out", default="index-build")
    parser.add_argument("--one", nargs=3, metavar=("MODE", "STORE", "FACTORY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(build(args.one[0], Path(args.one[1]), args.one[2])))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.store or tmp)
        if not (folder / "bertrec.sqlite3").exists():
            make_store(folder, args.rows)
        runs = []
        for factory in args.factories.split(";"):
            for mode in ("one batch", "service"):
                out = subprocess.run(
                    [sys.executable, __file__, "--one", mode, str(folder), factory],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                runs.append(json.loads(out.strip().splitlines()[-1]))
                r = runs[-1]
                print(
                    f"{factory:14} {mode:10} {r['build_s']:7.1f} s  peak RSS {r['peak_rss_mib']:6.0f} MiB"
                    f" (before the build {r['rss_before_build_mib']:.0f} MiB)"
                )
    path = write_results(args.out, {"rows": args.rows, "dim": DIM, "runs": runs})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
