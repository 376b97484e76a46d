"""Admin.ConfigureBatching against a real server: settings change on every replica at run time,
show in Info, the CLI and /metrics, survive a replica restart, and bad values are refused."""

from __future__ import annotations

import asyncio
import math
import time

import grpc
import numpy as np
import pytest

from bertrec.cli import main as cli_main
from bertrec.client import AsyncClient, Client, InvalidRequest
from bertrec.v1 import recommender_pb2 as pb
from bertrec.v1 import recommender_pb2_grpc as pb_grpc
from tests.integration.helpers import make_config
from tests.integration.test_observability import scrape, value

pytestmark = pytest.mark.integration

DEFAULTS = {"max_batch_size": 64, "max_wait_s": 0.005, "max_batch_tokens": 8192}
TEXTS = [f"Movie {i}: " + "a long and winding story " * (i % 9) for i in range(32)]


@pytest.fixture(scope="module")
def service(ray_cluster, server_thread_factory, tmp_path_factory):
    config = make_config(tmp_path_factory.mktemp("data"), server={"metrics_port": 0})
    server = server_thread_factory(config)
    client = Client(server.target, timeout_s=120)
    server.wait_ready(client)
    yield server, client
    client.close()
    server.stop()


@pytest.fixture
def client(service):
    """The service's client; every test leaves the configured defaults behind."""
    _, client = service
    yield client
    client.configure_batching(**DEFAULTS)


def settings(replica) -> dict:
    return {k: getattr(replica, k) for k in DEFAULTS}


def encode_concurrently(target: str, texts: list[str]) -> np.ndarray:
    async def run():
        async with AsyncClient(target, timeout_s=120) as aclient:
            return await asyncio.gather(*(aclient.encode([t]) for t in texts))

    return np.array([v[0] for v in asyncio.run(run())])


def test_settings_change_on_every_replica_and_show_in_info_and_metrics(service, client):
    server, _ = service
    assert [settings(r) for r in client.info().replicas] == [DEFAULTS, DEFAULTS]
    reference = np.array(client.encode(TEXTS))
    before = scrape(server)

    wanted = {"max_batch_size": 2, "max_wait_s": 0.02, "max_batch_tokens": 256}
    replicas = client.configure_batching(**wanted)
    assert len(replicas) == 2 and all(r.healthy and settings(r) == wanted for r in replicas)
    assert [settings(r) for r in client.info().replicas] == [wanted, wanted]

    vectors = encode_concurrently(server.target, TEXTS)
    np.testing.assert_allclose(vectors, reference, atol=2e-5)  # other batches, the same vectors

    after = scrape(server)
    for r in replicas:
        assert value(after, "bertrec_encoder_max_batch_size", replica=r.name) == 2
        assert value(after, "bertrec_encoder_max_wait_seconds", replica=r.name) == 0.02
        assert value(after, "bertrec_encoder_max_batch_tokens", replica=r.name) == 256
    names = [r.name for r in replicas]

    def delta(name, **labels):
        return sum(value(after, name, replica=n, **labels) - value(before, name, replica=n, **labels) for n in names)

    # Every batch since the change held at most 2 texts ...
    batches = delta("bertrec_encoder_batch_size_count")
    assert batches >= len(TEXTS) / 2 and delta("bertrec_encoder_batch_size_bucket", le="2.0") == batches
    assert delta("bertrec_encoder_batch_size_sum") == len(TEXTS)
    # ... every text's wait was recorded, and the model calls carried the texts' tokens.
    assert delta("bertrec_encoder_queue_seconds_count") == len(TEXTS)
    assert delta("bertrec_encoder_model_calls_total") >= batches
    assert delta("bertrec_encoder_padded_tokens_total") >= delta("bertrec_encoder_tokens_total") > len(TEXTS)


def test_unset_fields_keep_their_values(client):
    client.configure_batching(max_batch_size=8, max_batch_tokens=1024)
    replicas = client.configure_batching(max_wait_s=0.0)
    assert all(settings(r) == {"max_batch_size": 8, "max_wait_s": 0.0, "max_batch_tokens": 1024} for r in replicas)


@pytest.mark.parametrize(
    "bad",
    [
        {"max_batch_size": 0},
        {"max_batch_size": -3},
        {"max_batch_size": 10**9},
        {"max_wait_s": -0.001},
        {"max_wait_s": math.nan},
        {"max_wait_s": 3600.0},
        {"max_batch_tokens": 0},
        {"max_batch_tokens": 64},  # below the model's max length (128): one text would not fit
        {"max_batch_tokens": 10**12},
        {"max_batch_size": 16, "max_wait_s": -1.0},  # one bad value refuses the whole change
    ],
)
def test_bad_values_are_refused_and_change_nothing(client, bad):
    with pytest.raises(InvalidRequest):
        client.configure_batching(**bad)
    assert [settings(r) for r in client.info().replicas] == [DEFAULTS, DEFAULTS]


def test_an_empty_request_is_refused(service):
    server, _ = service
    with grpc.insecure_channel(server.target) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            pb_grpc.AdminStub(channel).ConfigureBatching(pb.ConfigureBatchingRequest(), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_cli(service, client, capsys):
    server, _ = service
    args = ["configure-batching", "--target", server.target, "--max-batch-size", "16", "--max-wait-ms", "2"]
    assert cli_main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("max batch 16 texts, max wait 2 ms, max 8192 padded tokens" in x for x in lines)
    assert cli_main(["configure-batching", "--target", server.target, "--max-batch-tokens", "5"]) == 1
    assert "max_batch_tokens must be between" in capsys.readouterr().err


def test_a_restarted_replica_keeps_the_settings(service, client, ray_cluster):
    server, _ = service
    wanted = {"max_batch_size": 4, "max_wait_s": 0.001, "max_batch_tokens": 2048}
    client.configure_batching(**wanted)
    client.encode(TEXTS[:16])  # split over both replicas: neither is fresh now
    assert all(r.encoded_texts > 0 for r in client.info().replicas)
    victim = server.state.pool.replicas[0]
    ray_cluster.kill(victim, no_restart=False)  # Ray restarts it with its constructor arguments
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        replicas = client.info().replicas
        if all(r.healthy for r in replicas) and replicas[0].encoded_texts == 0:
            break
        time.sleep(0.5)
    assert all(r.healthy for r in replicas) and replicas[0].encoded_texts == 0  # the fresh one
    assert [settings(r) for r in replicas] == [wanted, wanted]
