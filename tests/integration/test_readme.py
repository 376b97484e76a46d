"""The README's demo, as written: `bertrec serve` on the bundled catalogue, then `recommend --user 1`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bertrec.client import Client
from tests.integration.helpers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _bertrec() -> list[str]:
    return [sys.executable, "-m", "bertrec.cli"]


def _cli(*args: str, env: dict) -> str:
    """Run a `bertrec` client command and return what it printed."""
    return subprocess.run([*_bertrec(), *args], env=env, capture_output=True, text=True, timeout=60, check=True).stdout


def test_readme_names_its_commands():
    assert "make demo" in README and "make test" in README
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo: setup\n\t\$\(BERTREC\) serve$", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_client_example_is_valid_python():
    block = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    compile(block, "README.md", "exec")


def test_demo_serves_the_bundled_catalogue_and_recommends_for_user_1(ray_cluster, tmp_path):
    # The README's `bertrec serve` with no flags but a free port and a temp data dir; it starts
    # (or here joins) a local Ray and ingests MovieLens-small on first start.
    port = free_port()
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR", "BERTREC_WORKERS_CPUS_PER_REPLICA": "0.5"}
    cmd = [
        *_bertrec(),
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path / "data"),
        "--ray-address",
        ray_cluster.get_runtime_context().gcs_address,
    ]
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            with Client(f"127.0.0.1:{port}") as client:
                client.wait_until_serving(600)
                info = client.info()
            assert info.item_count == 9742 and info.user_count == 610 and info.index_size == 9742

            target = ["--target", f"127.0.0.1:{port}"]
            table = _cli("recommend", *target, "--user", "1", env=env)
            rows = [line for line in table.splitlines()[1:] if line.strip()]
            assert len(rows) == 10, table

            out = _cli("recommend", *target, "--user", "1", "--json", env=env)
            results = json.loads(out)
            assert [r["rank"] for r in results] == list(range(1, 11))
            assert all(r["text"] and r["because_text"] for r in results)
            stats = _cli("stats", *target, env=env)
            assert "9742 items, 610 users" in stats
        finally:
            proc.terminate()
            proc.wait(60)
    assert proc.returncode == 0
