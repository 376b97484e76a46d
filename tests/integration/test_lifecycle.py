"""Health before and after loading, SDK retries while loading, bearer token, mutual TLS, graceful stop."""

from __future__ import annotations

import threading

import pytest

from bertrec.client import Client, NotReady, Unauthenticated
from tests.integration.helpers import make_config
from tools.make_test_certs import make_certs

pytestmark = pytest.mark.integration

TOKEN = "test-token-123"


@pytest.fixture(scope="module")
def secured(ray_cluster, server_thread_factory, tmp_path_factory):
    """A token-protected server, observed from the moment it binds."""
    config = make_config(tmp_path_factory.mktemp("data"), workers={"replicas": 1}, auth={"token": TOKEN})
    server = server_thread_factory(config)
    early = Client(server.target, token=TOKEN, timeout_s=2, max_retries=0)
    observed = {"serving_at_bind": early.is_serving()}
    try:
        early.info()
    except NotReady as exc:
        observed["not_ready"] = str(exc)
    finally:
        early.close()
    # An SDK call made while loading is retried (UNAVAILABLE) until the server is ready.
    patient = Client(server.target, token=TOKEN, timeout_s=240, max_retries=30, initial_backoff_s=0.2)
    observed["info_after_retries"] = patient.info()
    patient.close()
    yield server, observed
    server.stop()


def test_health_is_not_serving_until_ready_and_calls_are_unavailable(secured):
    _, observed = secured
    assert observed["serving_at_bind"] is False
    assert "still loading" in observed["not_ready"]


def test_sdk_retries_unavailable_until_ready(secured):
    _, observed = secured
    assert observed["info_after_retries"].dim == 384


def test_token_is_required_and_health_stays_open(secured):
    server, _ = secured
    with Client(server.target, max_retries=0) as anonymous:
        assert anonymous.is_serving()  # probes need no token
        with pytest.raises(Unauthenticated):
            anonymous.info()
        with pytest.raises(Unauthenticated):
            list(anonymous.recommend(text="anything"))
    with Client(server.target, token="wrong", max_retries=0) as wrong, pytest.raises(Unauthenticated):
        wrong.encode(["x"])
    # A write without the token touches nothing.
    with Client(server.target, token=TOKEN) as good:
        before = good.info()
    with Client(server.target, max_retries=0) as anonymous:
        with pytest.raises(Unauthenticated):
            anonymous.upsert_items([{"id": 77, "text": "an intruder's item"}])
        with pytest.raises(Unauthenticated):
            anonymous.record_interactions([{"user_id": "intruder", "item_id": 77}])
    with Client(server.target, token=TOKEN) as good:
        after = good.info()
    assert (after.item_count, after.interaction_count, after.store_version) == (
        before.item_count,
        before.interaction_count,
        before.store_version,
    )
    with Client(server.target, token=TOKEN) as good:
        assert len(good.encode(["x"])[0]) == 384


def test_mutual_tls(ray_cluster, server_thread_factory, tmp_path):
    certs = make_certs(tmp_path / "certs")
    config = make_config(
        tmp_path / "data",
        workers={"replicas": 1},
        auth={
            "tls_cert": str(certs["server_cert"]),
            "tls_key": str(certs["server_key"]),
            "tls_client_ca": str(certs["ca"]),
        },
    )
    server = server_thread_factory(config)
    ca = certs["ca"].read_bytes()
    try:
        with Client(
            server.target,
            root_certificates=ca,
            client_cert=certs["client_cert"].read_bytes(),
            client_key=certs["client_key"].read_bytes(),
            timeout_s=240,
        ) as client:
            client.wait_until_serving(240)
            assert client.info().dim == 384
        # No client certificate: the handshake fails, nothing is served.
        with Client(server.target, root_certificates=ca, max_retries=0, timeout_s=5) as no_cert:
            assert not no_cert.is_serving()
        # Plain text against a TLS port fails too.
        with Client(server.target, max_retries=0, timeout_s=5) as plain:
            assert not plain.is_serving()
    finally:
        server.stop()


def test_concurrent_streams_during_graceful_stop(ray_cluster, server_thread_factory, tmp_path):
    """SIGTERM-style stop: health flips first, in-flight streams finish within the grace period."""
    server = server_thread_factory(make_config(tmp_path, workers={"replicas": 1}))
    client = Client(server.target, timeout_s=120)
    server.wait_ready(client)
    results: list = []
    texts = [f"text {i} " * 30 for i in range(200)]
    caller = threading.Thread(target=lambda: results.append(client.encode(texts)))
    caller.start()
    import time

    deadline = time.monotonic() + 60
    while server.server.admission.in_flight < 1:  # the encode call has reached the server
        assert time.monotonic() < deadline and caller.is_alive(), "the encode call never arrived"
        time.sleep(0.01)
    health: list[tuple[bool, bool]] = []  # (serving, the stream still running) as a probe saw them
    watching = threading.Event()

    def probe():
        with Client(server.target, max_retries=0) as prober:
            while not watching.is_set():
                health.append((prober.is_serving(timeout_s=1), caller.is_alive()))
                time.sleep(0.02)

    watcher = threading.Thread(target=probe)
    watcher.start()
    time.sleep(0.1)
    server.stop(grace_s=60)
    caller.join(60)
    watching.set()
    watcher.join(10)
    client.close()
    assert len(results) == 1 and len(results[0]) == 200  # the in-flight stream finished
    assert health[0] == (True, True)
    # Probes saw NOT_SERVING while the stream was still being served: drained, not cut.
    assert (False, True) in health
