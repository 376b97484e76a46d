"""Every kind of bad input gets its status code, and nothing crashes or goes missing."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from bertrec.client import Client, DeadlineExceeded, InvalidRequest, Item, NotFound
from tests.integration.helpers import catalogue, make_config

pytestmark = pytest.mark.integration

ITEMS = 60


@pytest.fixture(scope="module")
def service(ray_cluster, server_thread_factory, tmp_path_factory):
    config = make_config(
        tmp_path_factory.mktemp("data"),
        server={"max_message_bytes": 256 * 1024},
        workers={"replicas": 1, "max_queue": 64, "max_batch_size": 8},
    )
    server = server_thread_factory(config)
    client = Client(server.target, timeout_s=60, max_retries=0)
    server.wait_ready(client)
    items, ratings = catalogue()
    client.upsert_items(items[:ITEMS])
    ids = {i.id for i in items[:ITEMS]}
    client.record_interactions([r for r in ratings if r.item_id in ids][:300])
    yield server, client
    client.close()
    server.stop()


def _status(fn):
    try:
        result = fn()
        if hasattr(result, "__next__"):
            list(result)
    except grpc.RpcError as e:
        return e.code()
    except Exception as e:  # SDK-translated errors carry the gRPC code
        return getattr(e, "code", None)
    return grpc.StatusCode.OK


def test_statuses(service):
    server, client = service
    items, ratings = catalogue()
    user = ratings[0].user_id
    long_text = "x" * 2001
    cases = {
        "empty text": (lambda: client.encode([""]), grpc.StatusCode.INVALID_ARGUMENT),
        "blank text": (lambda: client.encode(["   "]), grpc.StatusCode.INVALID_ARGUMENT),
        "oversized text": (lambda: client.encode([long_text]), grpc.StatusCode.INVALID_ARGUMENT),
        "oversized item text": (lambda: client.upsert_items([Item(5, long_text)]), grpc.StatusCode.INVALID_ARGUMENT),
        "no texts": (lambda: client.encode([]), grpc.StatusCode.INVALID_ARGUMENT),
        "too many texts": (lambda: client.encode(["a"] * 501), grpc.StatusCode.INVALID_ARGUMENT),
        # 300 texts of 1,900 characters: each allowed, the message (570 kB) over the 256 kB limit.
        "message over the size limit": (lambda: client.encode(["y" * 1900] * 300), grpc.StatusCode.RESOURCE_EXHAUSTED),
        "too many items in one message": (
            lambda: client.upsert_items([Item(i + 1, "t") for i in range(501)], batch_size=501),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "unknown user": (lambda: client.recommend("nobody-here"), grpc.StatusCode.NOT_FOUND),
        "unknown history item": (lambda: client.recommend(history=[123456789]), grpc.StatusCode.NOT_FOUND),
        "unknown item get": (lambda: client.get_items([123456789]), grpc.StatusCode.NOT_FOUND),
        "unknown rerank candidate": (lambda: client.rerank(user, item_ids=[123456789]), grpc.StatusCode.NOT_FOUND),
        "unknown interaction item": (
            lambda: client.record_interactions([{"user_id": "u", "item_id": 123456789}]),
            grpc.StatusCode.NOT_FOUND,
        ),
        "k zero": (lambda: client.recommend(user, k=0), grpc.StatusCode.INVALID_ARGUMENT),
        "k above max": (lambda: client.recommend(user, k=101), grpc.StatusCode.INVALID_ARGUMENT),
        "pool below k": (lambda: client.recommend(user, k=10, candidate_pool_size=5), grpc.StatusCode.INVALID_ARGUMENT),
        "diversity out of range": (lambda: client.recommend(user, diversity=1.5), grpc.StatusCode.INVALID_ARGUMENT),
        "no user at all": (lambda: client.recommend(), grpc.StatusCode.INVALID_ARGUMENT),
        "negative item id": (lambda: client.get_items([-4]), grpc.StatusCode.INVALID_ARGUMENT),
        "zero item id": (lambda: client.upsert_items([Item(0, "zero")]), grpc.StatusCode.INVALID_ARGUMENT),
        "empty user id": (lambda: client.forget_user(""), grpc.StatusCode.INVALID_ARGUMENT),
        "ids and texts in rerank": (
            lambda: client.rerank(user, item_ids=[items[0].id], texts=["t"]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "metadata not an object": (
            lambda: client.upsert_items([{"id": 5, "text": "t", "metadata": "[1, 2]"}]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "malformed metadata": (
            lambda: client.upsert_items([{"id": 5, "text": "t", "metadata": "{oops"}]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    }
    got = {name: _status(fn) for name, (fn, _) in cases.items()}
    want = {name: code for name, (_, code) in cases.items()}
    assert got == want


def test_error_messages_say_what_is_wrong(service):
    _, client = service
    with pytest.raises(InvalidRequest, match="k must be between 1 and 100"):
        list(client.recommend("1", k=0))
    with pytest.raises(InvalidRequest, match="2001 characters; the limit is 2000"):
        client.encode(["x" * 2001])
    with pytest.raises(NotFound, match="unknown user 'ghost'"):
        list(client.recommend("ghost"))


def test_invalid_utf8_from_a_non_python_caller(service):
    server, _ = service
    # Hand-built EncodeRequest: field 1 (texts), length 3, bytes that are not UTF-8.
    raw = b"\x0a\x03\xff\xfe\xfd"
    with grpc.insecure_channel(server.target) as channel:
        encode = channel.unary_unary("/bertrec.v1.Embedder/Encode")
        with pytest.raises(grpc.RpcError) as err:
            encode(raw, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "UTF-8" in err.value.details()
        upsert = channel.stream_unary("/bertrec.v1.Catalog/UpsertItems")
        item = b"\x08\x07\x12\x02\xc3\x28"  # Item{id: 7, text: invalid 2-byte sequence}
        with pytest.raises(grpc.RpcError) as err:
            upsert(iter([b"\x0a" + bytes([len(item)]) + item]), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_rejected_stream_keeps_earlier_items(service):
    _, client = service
    good = [Item(700_001, "first good item"), Item(700_002, "second good item")]
    stream = [*good, Item(700_003, "")]  # the last message is bad
    with pytest.raises(InvalidRequest, match="2 earlier items in this stream were stored"):
        client.upsert_items(stream, batch_size=2)
    assert [i.id for i in client.get_items([700_001, 700_002])] == [700_001, 700_002]
    client.delete_items([700_001, 700_002])


def test_expired_deadline_skips_the_work(service):
    server, client = service
    before = server.call(server.state.pool.info())[0]["encoded_texts"]
    # Keep the only replica busy, then send a request whose deadline passes while it is queued.
    busy = threading.Thread(target=lambda: client.encode([f"busy text {i} " * 40 for i in range(48)], timeout_s=120))
    busy.start()
    time.sleep(0.3)
    with pytest.raises(DeadlineExceeded):
        client.encode([f"late text {i}" for i in range(8)], timeout_s=0.05)
    busy.join()
    time.sleep(0.5)
    info = server.call(server.state.pool.info())[0]
    assert info["encoded_texts"] - before == 48  # the late texts were never encoded
    assert info["expired"] >= 1


def test_full_queue_is_resource_exhausted_and_server_survives(service):
    server, client = service
    codes: list[grpc.StatusCode] = []
    lock = threading.Lock()

    def caller(n):
        code = _status(lambda: client.encode([f"caller {n} text {j} " * 10 for j in range(30)], timeout_s=60))
        with lock:
            codes.append(code)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    # Nothing crashed and nothing stored was lost.
    assert client.info().item_count == ITEMS
    assert len(client.encode(["still alive"])[0]) == 384
