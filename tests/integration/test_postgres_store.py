"""Front ends on different hosts share one PostgreSQL store: same items, interactions and vectors.

Each front end here has its own data dir (nothing on a shared disk), as on separate hosts.
"""

from __future__ import annotations

import pytest

from bertrec.client import Client
from tests.integration.helpers import make_config, seed_service

pytestmark = pytest.mark.integration


def test_two_front_ends_share_a_postgres_store(ray_cluster, server_thread_factory, tmp_path, postgres_url):
    def front_end(name: str):
        config = make_config(tmp_path / name, store={"url": postgres_url}, workers={"replicas": 1})
        server = server_thread_factory(config)
        client = Client(server.target, timeout_s=120)
        server.wait_ready(client)
        return server, client

    a, client_a = front_end("a")
    b = client_b = None
    try:
        users, ids = seed_service(client_a, items=120)
        before = [r.item_id for r in client_a.recommend(users[0], k=10)]
        b, client_b = front_end("b")
        info_a, info_b = client_a.info(), client_b.info()
        assert (info_b.item_count, info_b.interaction_count, info_b.index_size) == (
            info_a.item_count,
            info_a.interaction_count,
            info_a.index_size,
        )
        assert sum(r.encoded_texts for r in info_b.replicas) == 0  # B found A's vectors in the store
        assert [r.item_id for r in client_b.recommend(users[0], k=10)] == before
        # An interaction recorded through B is the user's history for A at once.
        client_b.record_interactions([{"user_id": users[0], "item_id": before[0], "timestamp": 2e9}])
        assert before[0] not in [r.item_id for r in client_a.recommend(users[0], k=10)]  # now seen
        assert client_a.info().store_version == client_b.info().store_version
    finally:
        for client in (client_a, client_b):
            if client is not None:
                client.close()
        for server in (a, b):
            if server is not None:
                server.stop()
