"""Load on loopback: a mixed load runs without errors, and overload is refused fast.

The longer soak (memory over time) is bench/load.py; its figures are in RELIABILITY.md.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from bench.loadgen import LoadGenerator
from bertrec.client import Client
from bertrec.errors import BertrecError
from tests.integration.helpers import make_config, record_figures, seed_service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_mixed_load_runs_without_errors(ray_cluster, server_thread_factory, tmp_path):
    server = server_thread_factory(make_config(tmp_path))
    client = Client(server.target, timeout_s=60)
    try:
        server.wait_ready(client)
        users, ids = seed_service(client)
        load = LoadGenerator(server.target, users, ids, clients=8, max_retries=0, seed=4)
        load.run(10)
        summary = load.summary()
        record_figures("mixed load, 8 clients, 10 s", **summary)
        assert not load.wrong
        statuses = load.statuses()
        assert set(statuses) <= {"OK", "RESOURCE_EXHAUSTED"}, statuses
        assert all(summary["by_op"][op]["statuses"].get("OK", 0) > 0 for op in load.mix)
        # Every acknowledged write is readable through the service.
        acked = sorted(load.acked_items)
        found = {i.id for start in range(0, len(acked), 500) for i in client.get_items(acked[start : start + 500])}
        assert found == load.acked_items
    finally:
        client.close()
        server.stop()


def test_overload_is_refused_fast_not_timed_out(ray_cluster, server_thread_factory, tmp_path):
    limit = 4
    config = make_config(tmp_path, server={"max_concurrent_rpcs": limit}, workers={"replicas": 1, "max_queue": 64})
    server = server_thread_factory(config)
    probe = Client(server.target, timeout_s=60)
    try:
        server.wait_ready(probe)
        texts = [f"an overloaded afternoon, take {i}: " + "long text " * 40 for i in range(16)]
        outcomes: list[tuple[str, float]] = []
        lock = threading.Lock()
        stop = threading.Event()
        deadline_s = 30.0

        def caller():
            with Client(server.target, timeout_s=deadline_s, max_retries=0) as client:
                while not stop.is_set():
                    began = time.monotonic()
                    try:
                        client.encode(texts)
                        status = "OK"
                    except BertrecError as exc:
                        status = exc.code.name
                    with lock:
                        outcomes.append((status, time.monotonic() - began))

        threads = [threading.Thread(target=caller) for _ in range(32)]
        for t in threads:
            t.start()
        time.sleep(3)
        serving_under_load = probe.is_serving(timeout_s=5)  # probes are never refused
        time.sleep(3)
        stop.set()
        for t in threads:
            t.join(deadline_s + 10)
        statuses = Counter(s for s, _ in outcomes)
        refused = sorted(d for s, d in outcomes if s == "RESOURCE_EXHAUSTED")
        record_figures(
            "overload: 32 callers, limit 4 in flight",
            statuses=dict(statuses),
            refused_p50_ms=round(1000 * refused[len(refused) // 2], 2) if refused else None,
            refused_max_ms=round(1000 * refused[-1], 2) if refused else None,
            admission_refused=server.server.admission.refused,
        )
        assert set(statuses) <= {"OK", "RESOURCE_EXHAUSTED"}, statuses
        assert statuses["OK"] > 0 and statuses["RESOURCE_EXHAUSTED"] > statuses["OK"]
        # Refused at once, not after queueing towards the deadline.
        assert refused[-1] < deadline_s / 10
        assert serving_under_load
        assert server.server.admission.in_flight == 0  # every admitted call was released
    finally:
        probe.close()
        server.stop()
