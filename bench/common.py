"""Benchmark plumbing: a served `bertrec` in its own process, timing helpers, result files."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (machines of one kind here have differed in CPU
    generation, which moves absolute figures); the architecture alone elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def machine() -> str:
    return f"{cpu_model()} ({platform.machine()}), {os.cpu_count()} cores, Python {platform.python_version()}"


def percentiles_ms(samples_s: list[float]) -> dict[str, float]:
    a = np.asarray(samples_s) * 1000
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)),
    }


class ServedBertrec:
    """`bertrec serve` in a subprocess; `started_s` is the time from launch to SERVING. `env` adds
    environment variables (e.g. BERTREC_* settings that have no flag)."""

    def __init__(self, data_dir: Path, *extra: str, log: Path | None = None, env: dict[str, str] | None = None):
        from bertrec.client import Client

        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        env = {**os.environ, "GRPC_VERBOSITY": "ERROR", "RAY_AUTH_MODE": "disabled", **(env or {})}
        self._log = open(log or data_dir.with_suffix(".log"), "ab")  # noqa: SIM115 (closed by stop())
        began = time.perf_counter()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bertrec.cli",
                "serve",
                "--port",
                str(self.port),
                "--data-dir",
                str(data_dir),
                *extra,
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        log_path = log or data_dir.with_suffix(".log")
        with Client(self.target) as client:
            deadline = time.monotonic() + 900
            while not client.is_serving():
                if self.proc.poll() is not None:  # died while starting: say so instead of waiting on
                    self._log.close()
                    tail = Path(log_path).read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"bertrec serve exited with {self.proc.returncode} while starting:\n{tail}")
                if time.monotonic() > deadline:
                    self.proc.kill()
                    raise TimeoutError(f"bertrec serve was not SERVING within 900 s (log: {log_path})")
                time.sleep(0.1)
        self.started_s = time.perf_counter() - began

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(120)
        self._log.close()


def process_tree(root: int) -> list[int]:
    """`root` and every process below it (a served bertrec: its local Ray's GCS, raylet and workers),
    from /proc; just [root] off Linux."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:  # the command name, in parentheses, may hold spaces: the ppid follows the last ")"
            parent[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    tree, frontier = [root], {root}
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier}
        tree += sorted(frontier)
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU time `pid` has used so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_results(name: str, payload: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    payload = {"date": date.today().isoformat(), "machine": machine(), **payload}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path
