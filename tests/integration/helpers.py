"""Test catalogue (a slice of the bundled MovieLens-small) and config builders."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path

from bertrec.client import Client
from bertrec.config import load_config
from bertrec.movielens import bundled_path, read_movies, read_ratings

CATALOGUE_SIZE = 400


@lru_cache(maxsize=1)
def catalogue():
    items = list(read_movies(bundled_path()))[:CATALOGUE_SIZE]
    ids = {i.id for i in items}
    ratings = [r for r in read_ratings(bundled_path()) if r.item_id in ids]
    return items, ratings


def movielens_slice(n_items: int = CATALOGUE_SIZE):
    """The first `n_items` test movies and their ratings as an evaluation Dataset."""
    import numpy as np

    from bertrec.evaluation.data import Dataset

    items, ratings = catalogue()
    items = items[:n_items]
    ids = {i.id for i in items}
    ratings = [r for r in ratings if r.item_id in ids]
    return Dataset(
        items,
        np.array([r.user_id for r in ratings]),
        np.array([r.item_id for r in ratings], np.int64),
        np.array([r.timestamp for r in ratings], np.float64),
        np.array([r.weight for r in ratings], np.float32),
        positive_threshold=1.0,
    )


def make_config(data_dir, **sections):
    """Small, fast settings: two half-CPU replicas so several servers fit one 2-CPU Ray."""
    overrides = {
        "server": {
            "host": "127.0.0.1",
            "port": 0,
            "max_k": 100,
            "max_text_chars": 2000,
            "max_items_per_request": 500,
            "snapshot_interval_s": 3600.0,
        },
        "store": {"data_dir": str(data_dir), "load_demo": False},
        "workers": {"replicas": 2, "cpus_per_replica": 0.5, "max_queue": 4096},
    }
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return load_config(environ={}, overrides=overrides)


def free_port() -> int:
    """A loopback port free right now, for servers started as separate processes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`bertrec serve` in its own process, joined to the test's Ray cluster (one private replica).

    `port` lets a restarted server take its predecessor's address, as a supervisor would.
    """

    def __init__(self, data_dir: Path, gcs_address: str, log_path: Path, port: int | None = None, **env: str):
        self.port = port or free_port()
        env = {
            **os.environ,
            "BERTREC_WORKERS_CPUS_PER_REPLICA": "0.5",
            "BERTREC_SERVER_SNAPSHOT_INTERVAL_S": "3600",
            "GRPC_VERBOSITY": "ERROR",
            **env,
        }
        self.log = open(log_path, "ab")
        cmd = [sys.executable, "-m", "bertrec.cli", "serve", "--port", str(self.port), "--data-dir", str(data_dir)]
        cmd += ["--no-demo", "--replicas", "1", "--ray-address", gcs_address]
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.target = f"127.0.0.1:{self.port}"
        self.client = Client(self.target, timeout_s=60)
        self.client.wait_until_serving(240)
        self.serving_after_s = time.monotonic() - self.started_at

    def kill(self, sig: int) -> None:
        self.client.close()
        self.proc.send_signal(sig)
        self.proc.wait(60)
        self.log.close()


def assert_nothing_lost(store, load) -> None:
    """Every write the load generator saw acknowledged is in `store` (a Store on the data dir)."""
    acked = sorted(load.acked_items)
    found = store.get_items(acked)
    assert not [i for i in acked if i not in found], "acknowledged items are missing"
    missing = []
    for interaction in load.acked_interactions:
        history, _ = store.history(interaction.user_id, 10)
        if interaction.item_id not in [h.item_id for h in history]:
            missing.append(interaction)
    assert not missing, f"acknowledged interactions are missing: {missing[:5]}"


def record_figures(name: str, **figures) -> None:
    """Print a reliability figure and, with BERTREC_RELIABILITY_LOG set, append it there as JSON
    (RELIABILITY.md quotes that file)."""
    line = json.dumps({"test": name, **figures}, default=str)
    print(f"\nRELIABILITY {line}")
    log = os.environ.get("BERTREC_RELIABILITY_LOG")
    if log:
        with open(log, "a") as f:
            f.write(line + "\n")


def seed_service(client: Client, items: int = 200) -> tuple[list[str], list[int]]:
    """Upsert the first `items` test movies and their ratings; (up to 50 rating users, item ids)."""
    catalog, ratings = catalogue()
    catalog = catalog[:items]
    ids = {i.id for i in catalog}
    ratings = [r for r in ratings if r.item_id in ids]
    client.upsert_items(catalog)
    for start in range(0, len(ratings), 500):  # make_config's per-request limit
        client.record_interactions(ratings[start : start + 500])
    return sorted({r.user_id for r in ratings})[:50], sorted(ids)


def ingest_and_wait_for_reranker(client: Client, server, items, ratings, timeout_s: float = 60.0) -> None:
    """Upsert `items` and `ratings`, then wait until the server's trained re-ranker has refitted
    its signals on them (a ServerThread with `rerank.path` set)."""
    client.upsert_items(items)
    for start in range(0, len(ratings), 500):  # make_config's per-request limit
        client.record_interactions(ratings[start : start + 500])
    ingested = client.info().store_version
    deadline = time.monotonic() + timeout_s
    while not (server.state.reranker.fitted and server.state.reranker.fitted.store_version >= ingested):
        assert time.monotonic() < deadline, "re-ranker signals were never refitted after ingestion"
        time.sleep(0.2)


def slice_dataset(items: int = CATALOGUE_SIZE):
    """The first `items` test movies and their ratings as an evaluation Dataset, with their vectors
    from the packaged encoder: (dataset, vectors, ratings)."""
    import numpy as np

    from bertrec.evaluation.data import Dataset
    from bertrec.workers.encoder import BertEncoder, default_model_path

    catalog, ratings = catalogue()
    catalog = catalog[:items]
    ids = {i.id for i in catalog}
    ratings = [r for r in ratings if r.item_id in ids]
    ds = Dataset(
        catalog,
        np.array([r.user_id for r in ratings]),
        np.array([r.item_id for r in ratings], np.int64),
        np.array([r.timestamp for r in ratings], np.float64),
        np.array([r.weight for r in ratings], np.float32),
        positive_threshold=1.0,  # demo weights are rating - 3: rating >= 4 is a positive
    )
    vectors = BertEncoder(default_model_path(), "cpu").encode_items([i.text for i in catalog])
    return ds, vectors, ratings
