"""Shared fixtures: one local Ray per test run, servers started on free loopback ports."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def ray_cluster():
    """Real local Ray, started once; servers join it instead of starting their own."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, namespace="bertrec-tests", include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


class ServerThread:
    """A real BertrecServer on 127.0.0.1:0, driven by its own event loop in a background thread."""

    def __init__(self, config):
        from bertrec.server.app import create_server

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def build():
            return create_server(config)

        self.server, self.port = self._run(build())
        self.target = f"127.0.0.1:{self.port}"
        self._starting = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop)

    def _run(self, coro, timeout=300):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def wait_ready(self, client, timeout_s=300):
        client.wait_until_serving(timeout_s)
        assert self._starting.done() and self._starting.exception() is None

    @property
    def state(self):
        return self.server.state

    def call(self, coro, timeout=300):
        """Run a coroutine on the server's loop (for tests that reach inside, e.g. the pool)."""
        return self._run(coro, timeout)

    def stop(self, grace_s=1.0):
        try:
            self._run(self.server.stop(grace_s))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


@pytest.fixture(scope="session")
def server_thread_factory():
    return ServerThread


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A real PostgreSQL server (the pgserver wheel's binaries) in a temp dir, for the whole run."""
    pgserver = pytest.importorskip("pgserver")
    server = pgserver.get_server(tmp_path_factory.mktemp("postgres"), cleanup_mode="stop")
    yield server
    server.cleanup()


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database on the test PostgreSQL server."""
    import uuid

    name = f"t_{uuid.uuid4().hex[:12]}"
    postgres_server.psql(f"CREATE DATABASE {name};")
    return postgres_server.get_uri(name)
