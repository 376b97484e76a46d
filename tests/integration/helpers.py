"""Test catalogue (a slice of the bundled MovieLens-small) and config builders."""

from __future__ import annotations

import socket
from functools import lru_cache

from bertrec.config import load_config
from bertrec.movielens import bundled_path, read_movies, read_ratings

CATALOGUE_SIZE = 400


@lru_cache(maxsize=1)
def catalogue():
    items = list(read_movies(bundled_path()))[:CATALOGUE_SIZE]
    ids = {i.id for i in items}
    ratings = [r for r in read_ratings(bundled_path()) if r.item_id in ids]
    return items, ratings


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
