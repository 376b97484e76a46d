"""Cluster mode: two front ends on a two-node Ray cluster share detached encoder replicas and
index shards, serve the same answers, and outlive each other.

The cluster is started as the README says, with `ray start` (head and worker, both `--block` so
the test owns their processes and stops them by pid), in a temp dir and on ports of its own: the
session Ray of the other tests is never touched (no `ray stop`, which stops every Ray on the host).
Both front ends use `index.shards = 2`, so the index lives in shared shard actors and each front
end sees the other's writes at once; with one in-process index per front end, a front end would
only see writes made before it started (it builds its index from the store at start).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bench.loadgen import LoadGenerator
from bertrec.client import Client, Item
from bertrec.store import SQLiteStore
from tests.integration.helpers import assert_nothing_lost, catalogue, free_port, record_figures

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

RAY = Path(sys.executable).with_name("ray")
POOL = "cluster-test-encoder"
SHARDS = "cluster-test-index"
NAMESPACE = "bertrec"  # workers.namespace's default
ITEMS = 100

# Run in a separate process (this one is a driver of the session Ray): join the cluster, wait for
# its nodes, print the live nodes' custom resources and every named actor.
QUERY = """
import json, sys, time
import ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
deadline = time.monotonic() + 90
while sum(n["Alive"] for n in ray.nodes()) < int(sys.argv[2]):
    if time.monotonic() > deadline:
        sys.exit("the cluster's nodes did not all join")
    time.sleep(0.5)
nodes = {n["NodeID"]: sorted(r for r in n["Resources"] if r.startswith("node_")) for n in ray.nodes() if n["Alive"]}
print(json.dumps({"nodes": nodes, "actors": ray.util.list_named_actors(all_namespaces=True)}))
"""


def _dies_with_us(cmd: list[str]) -> list[str]:
    """`cmd` getting SIGTERM if the test process dies, so a crashed run leaks no cluster (Linux's
    setpriv; a preexec_fn is not safe in a process with threads)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", *cmd] if setpriv else cmd


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    return {**env, "GRPC_VERBOSITY": "ERROR", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _pids_using(temp_dir: str) -> list[int]:
    """Processes whose command line names the cluster's temp dir (raylets, GCS, workers, agents)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if temp_dir.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:  # gone meanwhile
                pass
    return pids


class TwoNodeCluster:
    """`ray start --head` and `ray start --address` on loopback: nodes with resources node_a / node_b."""

    def __init__(self, log_dir: Path):
        # Short: Ray's unix socket paths live under it and must stay below ~107 characters.
        self.temp_dir = tempfile.mkdtemp(prefix="bertrec-ray-", dir="/tmp")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []
        self.log_dir = log_dir
        self._start("head", "--head", "--port", str(self.port), "--include-dashboard=false", resource="node_a")
        self._wait_for_gcs(60)
        self._start("worker", "--address", self.address, resource="node_b")
        self.nodes = self.query()["nodes"]
        assert sorted(self.nodes.values()) == [["node_a"], ["node_b"]]

    def _start(self, role: str, *args: str, resource: str) -> None:
        cmd = [str(RAY), "start", "--block", *args, "--node-ip-address", "127.0.0.1", "--num-cpus", "1"]
        cmd += ["--num-gpus", "0", "--resources", json.dumps({resource: 1}), "--temp-dir", self.temp_dir]
        cmd += ["--object-store-memory", str(100 * 1024 * 1024), "--disable-usage-stats"]
        # Every port of our own choosing (or the OS's), none of Ray's defaults the session Ray may hold.
        cmd += ["--min-worker-port", "0", "--max-worker-port", "0", "--node-manager-port", "0"]
        for flag in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port"):
            cmd += [flag, str(free_port())]
        cmd += ["--metrics-export-port", str(free_port())]
        if role == "head":
            cmd += ["--ray-client-server-port", str(free_port())]
        # No drain on SIGTERM: it waits up to 30 s for work this cluster never runs (Serve proxies).
        env = {**_env(), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
        with open(self.log_dir / f"ray-{role}.log", "wb") as log:
            self.procs.append(subprocess.Popen(_dies_with_us(cmd), env=env, stdout=log, stderr=subprocess.STDOUT))

    def _wait_for_gcs(self, timeout_s: float) -> None:
        import socket

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.procs[0].poll() is None, (self.log_dir / "ray-head.log").read_text()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.5)
        raise TimeoutError(f"the head's GCS did not listen on {self.address} within {timeout_s:.0f}s")

    def query(self) -> dict:
        out = subprocess.run(
            [sys.executable, "-c", QUERY, self.address, "2"], env=_env(), capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        """SIGTERM the `ray start --block` processes (worker first), which stop their nodes; then
        make sure nothing started for this cluster is left running."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        deadline = time.monotonic() + 30
        while (left := _pids_using(self.temp_dir)) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in left:  # only processes of this cluster: their command line names its temp dir
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        assert not left, f"processes of the test cluster outlived `ray start --block`: {left}"


class FrontEnd:
    """`bertrec serve` in its own process, joined to the cluster, on the shared pool and shards."""

    def __init__(self, cluster: TwoNodeCluster, data_dir: Path, log_path: Path, **settings: str):
        self.ready = log_path.with_suffix(".port")
        env = {
            **_env(),
            "BERTREC_WORKERS_CPUS_PER_REPLICA": "0.5",
            "BERTREC_INDEX_SHARD_PREFIX": SHARDS,
            "BERTREC_INDEX_CPUS_PER_SHARD": "0",
            "BERTREC_INDEX_USE_GPU": "no",
            "BERTREC_SERVER_SNAPSHOT_INTERVAL_S": "3600",
            **settings,
        }
        cmd = [sys.executable, "-m", "bertrec.cli", "serve", "--port", "0", "--data-dir", str(data_dir), "--no-demo"]
        cmd += ["--ray-address", cluster.address, "--pool-name", POOL, "--replicas", "2", "--index-shards", "2"]
        cmd += ["--ready-file", str(self.ready)]
        self.log_path = log_path
        self.client: Client | None = None
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(_dies_with_us(cmd), env=env, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 180) -> FrontEnd:
        deadline = time.monotonic() + timeout_s
        while not (self.ready.exists() and self.ready.read_text()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"front end did not start:\n{self.log_path.read_text()[-5000:]}")
            time.sleep(0.5)
        self.client = Client(f"127.0.0.1:{int(self.ready.read_text())}", timeout_s=60)
        self.client.wait_until_serving(30)
        return self

    def recommend(self, **kwargs) -> list[int]:
        return [r.item_id for r in self.client.recommend(**kwargs)]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.client is not None:
            self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def _replica_actors(actors: list[dict]) -> list[tuple[str, str]]:
    """(namespace, name) of every encoder replica: shared ones and private ones (random names)."""
    return sorted((a["namespace"], a["name"]) for a in actors if a["name"].startswith((POOL, "bertrec-encoder-")))


@pytest.fixture
def cluster(tmp_path):
    if not RAY.exists():
        pytest.skip(f"no ray command beside {sys.executable}")
    cluster = TwoNodeCluster(tmp_path)
    try:
        yield cluster
    finally:
        cluster.stop()


def test_two_front_ends_share_replicas_and_outlive_each_other(cluster, tmp_path):
    items, ratings = catalogue()
    items = items[:ITEMS]
    ids = {i.id for i in items}
    ratings = [r for r in ratings if r.item_id in ids]
    user = ratings[0].user_id
    data_dir = tmp_path / "data"  # one host: both front ends share the SQLite store (WAL)

    a = FrontEnd(cluster, data_dir, tmp_path / "a.log").wait_ready()
    b = c = None
    try:
        a.client.upsert_items(items)
        a.client.record_interactions(ratings)
        before = a.recommend(user_id=user, k=10)
        assert len(before) == 10

        b = FrontEnd(cluster, data_dir, tmp_path / "b.log").wait_ready()
        assert b.recommend(user_id=user, k=10) == before

        # One pool of two replicas, made by A and attached to by B, one on each node.
        info = b.client.info()
        assert sorted(r.name for r in info.replicas) == [f"{POOL}-0", f"{POOL}-1"]
        assert all(r.healthy for r in info.replicas)
        assert sorted(cluster.nodes[r.node_id][0] for r in info.replicas) == ["node_a", "node_b"]
        assert (info.item_count, info.index_size) == (ITEMS, ITEMS)

        # A front end that wants the pool with other settings is refused, and makes no replicas.
        c = FrontEnd(cluster, data_dir, tmp_path / "c.log", BERTREC_MODEL_MAX_LENGTH="64")
        assert c.proc.wait(120) != 0
        assert "was built with other settings (max_length: pool has 128, this front end 64)" in c.log_path.read_text()
        actors = cluster.query()["actors"]
        assert _replica_actors(actors) == [(NAMESPACE, f"{POOL}-0"), (NAMESPACE, f"{POOL}-1")]
        assert sorted(a["name"] for a in actors if a["name"].startswith(SHARDS)) == [
            f"{SHARDS}-shard-0",
            f"{SHARDS}-shard-1",
        ]

        # A write through B is in A's answers at once: the index shards are shared too.
        new = Item(990001, "Quantum Gardeners of the Lower Clyde (2031)", {"genres": ["Sci-Fi"]})
        b.client.upsert_items([new])
        assert a.recommend(text=new.text, k=1) == [new.id]
        both = a.recommend(user_id=user, k=10)
        assert b.recommend(user_id=user, k=10) == both

        # A crashes under a load balanced over both: B keeps serving, on the same replicas, with
        # the same answers; the calls A held fail UNAVAILABLE and the SDK retries them on B.
        users = sorted({r.user_id for r in ratings})[:30]
        load = LoadGenerator([a.client.target, b.client.target], users, [*ids, new.id], clients=4, seed=5)
        load.start()
        time.sleep(3)
        killed_at = load.now()
        a.stop(signal.SIGKILL)
        time.sleep(5)
        load.stop()
        assert not load.wrong
        assert set(load.statuses()) <= {"OK", "UNAVAILABLE"}, load.statuses()
        assert load.statuses(since_s=killed_at + 2)["OK"] > 0
        store = SQLiteStore(data_dir)
        try:
            assert_nothing_lost(store, load)
        finally:
            store.close()
        last = load.last_failure_s()
        record_figures(
            "front end SIGKILLed, SDK balancing over two",
            unavailable_window_s=round(last - killed_at, 2) if last and last > killed_at else 0.0,
            calls_after_kill=dict(load.statuses(since_s=killed_at)),
            **load.summary(),
        )
        assert len(b.recommend(user_id=user, k=10)) == 10  # (the load's new items may now rank in it)
        assert b.recommend(text=new.text, k=1) == [new.id]
        assert all(r.healthy for r in b.client.info().replicas)

        # B stops cleanly, and the shared replicas stay for the next front end.
        assert b.stop(signal.SIGTERM) == 0
        assert _replica_actors(cluster.query()["actors"]) == [(NAMESPACE, f"{POOL}-0"), (NAMESPACE, f"{POOL}-1")]
        assert "leaving shared encoder pool" in (tmp_path / "b.log").read_text()
    finally:
        for front_end in (a, b, c):
            if front_end is not None:
                front_end.stop(signal.SIGKILL)
