"""Property-based fuzzing of every RPC against one real server.

Malformed and extreme requests (empty, huge and odd unicode strings, out-of-range k and ids, odd
floats, random metadata JSON, random call metadata, and random bytes or hand-built protobuf wire
data as raw request bodies) must each get a deliberate status: never INTERNAL or UNKNOWN. After
them the server is still SERVING and every item stored before the fuzzing is still there.

Bounded: a fixed number of examples per RPC, no per-example deadline, no example database.
"""

from __future__ import annotations

import json
from collections import Counter

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bertrec.client import Client, Item
from bertrec.v1 import recommender_pb2 as pb
from tests.integration.helpers import catalogue, make_config

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")]

FUZZ = settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
RAW_FUZZ = settings(FUZZ, max_examples=250)

# The items stored before the fuzzing; their ids are far from anything a strategy aims at.
BASE_ID = 7_340_912_117_000
PROTECTED = 30
PROTECTED_IDS = frozenset(range(BASE_ID, BASE_ID + PROTECTED))
USER = "fuzz-user"
BROKEN = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
TIMEOUT_S = 60

METHODS = {  # path: (request streaming, response streaming)
    "/bertrec.v1.Recommender/Recommend": (False, True),
    "/bertrec.v1.Recommender/RecommendStream": (True, True),
    "/bertrec.v1.Recommender/Rerank": (False, True),
    "/bertrec.v1.Catalog/UpsertItems": (True, False),
    "/bertrec.v1.Catalog/DeleteItems": (False, False),
    "/bertrec.v1.Catalog/GetItems": (False, False),
    "/bertrec.v1.Catalog/RecordInteractions": (False, False),
    "/bertrec.v1.Catalog/ForgetUser": (False, False),
    "/bertrec.v1.Embedder/Encode": (False, False),
    "/bertrec.v1.Admin/Info": (False, False),
    "/bertrec.v1.Admin/LoadModel": (False, True),
}

seen_codes: Counter = Counter()


@pytest.fixture(scope="module")
def service(ray_cluster, server_thread_factory, tmp_path_factory):
    config = make_config(tmp_path_factory.mktemp("data"), workers={"replicas": 1, "cpus_per_replica": 0.5})
    server = server_thread_factory(config)
    client = Client(server.target, timeout_s=120)
    server.wait_ready(client)
    movies, _ = catalogue()
    protected = [Item(BASE_ID + n, m.text, m.metadata) for n, m in enumerate(movies[:PROTECTED])]
    client.upsert_items(protected)
    client.record_interactions([{"user_id": USER, "item_id": i.id} for i in protected[:10]])
    with grpc.insecure_channel(server.target) as channel:
        yield client, channel, protected
    client.close()
    server.stop()


# Call mechanics: raw channel calls, so every status reaches the test untranslated.
def call(channel: grpc.Channel, path: str, body, metadata=(), serialize=None) -> grpc.StatusCode:
    streaming_in, streaming_out = METHODS[path]
    factory = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[(streaming_in, streaming_out)]
    invoke = factory(path, request_serializer=serialize)
    try:
        result = invoke(iter(body) if streaming_in else body, timeout=TIMEOUT_S, metadata=metadata)
        if streaming_out:
            for _ in result:
                pass
        code = grpc.StatusCode.OK
    except grpc.RpcError as error:
        code = error.code()
    seen_codes[code] += 1
    return code


def send(channel: grpc.Channel, path: str, message, metadata=()) -> None:
    code = call(channel, path, message, metadata, serialize=_serialize)
    assert code not in BROKEN, f"{path} answered {code.name} to {message!r}"[:2000]


def _serialize(message) -> bytes:
    return message.SerializeToString()


# Strategies. Each request is built plausible field by field, then up to three fields are
# swapped for odd values: a request with every field odd only ever tests the first check it fails.
@st.composite
def _fields(draw, plausible: dict, odd: dict) -> dict:
    swapped = draw(st.sets(st.sampled_from(sorted(odd)), max_size=3))
    return {name: draw(odd[name] if name in swapped else strategy) for name, strategy in plausible.items()}


def _repeat(ch: str, n: int) -> str:
    return ch * n


protected_ids = st.sampled_from(sorted(PROTECTED_IDS))
new_ids = st.integers(1, 10**12).filter(lambda i: i not in PROTECTED_IDS)
words = st.text(st.characters(categories=("L", "N", "Zs")), min_size=1, max_size=30).filter(str.strip)
ODD_TEXTS = ["", " ", "\t\n", "\x00", "a\x00b", "\u200b", "\u202eevil", "\U0001f642" * 600, "\ufeff", "null"]
texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(ODD_TEXTS),
    # utf-8 only: a lone surrogate cannot go into a protobuf string at all (the caller fails first)
    st.builds(_repeat, st.characters(codec="utf-8"), st.sampled_from([1999, 2000, 2001, 10_000, 100_000])),
)
int64s = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, -1, 1, 2**31, 2**32 + 1, 2**53 + 1, 2**63 - 1, -(2**63)]),
).filter(lambda i: i not in PROTECTED_IDS)
known_or_odd_ids = st.one_of(int64s, protected_ids)
too_many_ids = st.just(list(range(1, 502)))  # the test config allows 500 per request
uint32s = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 100, 101, 5000, 5001, 2**32 - 1]))
floats32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
doubles = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([-1.0, 0.0, 1e300]))
user_ids = st.one_of(st.text(max_size=300), st.sampled_from(["", " ", USER, "\x00", "x" * 257]))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)
ODD_JSON = ["{", "[]", "null", "1e999", '{"a": NaN}', '{"a": 1e400}', '"\\ud800"', '{"\\u0000": 1}', "[" * 50_000]
ODD_JSON += ['{"a":' * 50_000, '{"a": "' + "x" * 100_000 + '"}']
metadata_json = st.one_of(st.text(max_size=60), json_values.map(json.dumps), st.sampled_from(ODD_JSON))
request_ids = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200)
call_metadata = st.lists(
    st.tuples(st.sampled_from(["x-request-id", "x-fuzz", "x-trace"]), request_ids), max_size=3
).map(tuple)

plausible_users = st.one_of(
    st.builds(pb.UserQuery, user_id=st.just(USER)),
    st.builds(pb.UserQuery, history_item_ids=st.lists(protected_ids, min_size=1, max_size=4, unique=True)),
    st.builds(pb.UserQuery, text=words),
    st.builds(pb.UserQuery, user_id=st.just(USER), text=words),
)
odd_users = st.builds(
    pb.UserQuery,
    user_id=user_ids,
    history_item_ids=st.one_of(st.lists(known_or_odd_ids, max_size=4), too_many_ids),
    text=st.one_of(st.just(""), texts),
)
genre_filters = st.builds(
    pb.MetadataFilter, key=st.just("genres"), values=st.lists(st.sampled_from(["Comedy", "Drama", "Animation"]))
)
odd_filters = st.one_of(
    st.lists(st.builds(pb.MetadataFilter, key=st.text(max_size=10), values=st.lists(texts, max_size=3)), max_size=3),
    st.just([pb.MetadataFilter(key="genres", values=["Drama"])] * 33),
)


def _recommend(fields: dict) -> pb.RecommendRequest:
    exclude_seen = fields.pop("exclude_seen")
    request = pb.RecommendRequest(**fields)
    if exclude_seen is not None:  # optional field: unset means true
        request.exclude_seen = exclude_seen
    return request


recommend_requests = _fields(
    {
        "request_id": st.text(max_size=20),
        "user": plausible_users,
        "k": st.integers(1, 20),
        "candidate_pool_size": st.one_of(st.just(0), st.integers(20, 300)),
        "filters": st.one_of(st.just([]), st.lists(genre_filters, max_size=2)),
        "diversity": st.one_of(st.just(0.0), st.floats(0.0, 0.9)),
        "include_items": st.booleans(),
        "chunk_size": st.integers(0, 10),
        "exclude_item_ids": st.lists(protected_ids, max_size=3),
        "exclude_seen": st.one_of(st.none(), st.booleans()),
    },
    {
        "request_id": texts,
        "user": odd_users,
        "k": uint32s,
        "candidate_pool_size": uint32s,
        "filters": odd_filters,
        "diversity": floats32,
        "chunk_size": uint32s,
        "exclude_item_ids": st.one_of(st.lists(int64s, max_size=4), too_many_ids),
    },
).map(_recommend)


def _rerank(fields: dict) -> pb.RerankRequest:
    ids, candidate_texts = fields.pop("candidates")
    return pb.RerankRequest(candidate_item_ids=ids, candidate_texts=candidate_texts, **fields)


rerank_requests = _fields(
    {
        "request_id": st.text(max_size=20),
        "user": plausible_users,
        "candidates": st.one_of(
            st.tuples(st.lists(protected_ids, min_size=1, max_size=5, unique=True), st.just([])),
            st.tuples(st.just([]), st.lists(words, min_size=1, max_size=3)),
        ),
        "diversity": st.one_of(st.just(0.0), st.floats(0.0, 0.9)),
        "include_items": st.booleans(),
        "chunk_size": st.integers(0, 10),
    },
    {
        "user": odd_users,
        "candidates": st.tuples(
            st.one_of(st.lists(known_or_odd_ids, max_size=4), too_many_ids), st.lists(texts, max_size=3)
        ),
        "diversity": floats32,
        "chunk_size": uint32s,
    },
).map(_rerank)

items = _fields(
    {
        "id": new_ids,
        "text": words,
        "metadata_json": st.one_of(st.just(""), st.dictionaries(st.text(max_size=8), json_values).map(json.dumps)),
    },
    {"id": int64s, "text": texts, "metadata_json": metadata_json},
).map(lambda fields: pb.Item(**fields))
item_batches = st.one_of(
    st.lists(st.lists(items, max_size=3), max_size=3),
    st.just([[pb.Item(id=i, text="t") for i in range(1, 502)]]),
)
id_lists = st.one_of(st.lists(new_ids, min_size=1, max_size=6), st.lists(int64s, max_size=6), too_many_ids)


def _interaction(fields: dict) -> pb.Interaction:
    weight = fields.pop("weight")
    x = pb.Interaction(**fields)
    if weight is not None:  # optional field: unset means 1
        x.weight = weight
    return x


interactions = _fields(
    {
        "user_id": st.one_of(st.just(USER), words),
        "item_id": protected_ids,
        "timestamp": st.one_of(st.just(0.0), st.floats(0.0, 2e9)),
        "weight": st.one_of(st.none(), st.floats(-1.0, 5.0)),
    },
    {"user_id": user_ids, "item_id": int64s, "timestamp": doubles, "weight": floats32},
).map(_interaction)


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative numbers as protobuf writes them: ten bytes
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _wire_field(field: int, wire_type: int, number: int, payload: bytes) -> bytes:
    key = _varint(field << 3 | wire_type)
    if wire_type == 0:
        return key + _varint(number)
    if wire_type == 1:
        return key + (number & (2**64 - 1)).to_bytes(8, "little")
    if wire_type == 5:
        return key + (number & (2**32 - 1)).to_bytes(4, "little")
    return key + _varint(len(payload)) + payload


# Protobuf wire data with the right shape but any field number, type and value: negative k,
# nested garbage, strings that are not UTF-8, truncated lengths.
wire_messages = st.lists(
    st.builds(
        _wire_field,
        st.integers(1, 12),
        st.sampled_from([0, 1, 2, 5]),
        st.integers(-(2**63), 2**64 - 1),
        st.binary(max_size=48),
    ),
    max_size=6,
).map(b"".join)
raw_bodies = st.one_of(st.binary(max_size=256), wire_messages, wire_messages.map(lambda b: b[:-1]))


def assert_intact(client: Client, protected: list[Item]) -> None:
    assert client.is_serving()
    stored = client.get_items([i.id for i in protected])
    assert [(i.id, i.text, i.metadata) for i in stored] == [(i.id, i.text, i.metadata) for i in protected]


# One property per RPC
@FUZZ
@given(request=recommend_requests, metadata=call_metadata)
def test_recommend(service, request, metadata):
    send(service[1], "/bertrec.v1.Recommender/Recommend", request, metadata)


@FUZZ
@given(requests=st.lists(recommend_requests, max_size=3))
def test_recommend_stream(service, requests):
    send(service[1], "/bertrec.v1.Recommender/RecommendStream", requests)


@FUZZ
@given(request=rerank_requests)
def test_rerank(service, request):
    send(service[1], "/bertrec.v1.Recommender/Rerank", request)


@FUZZ
@given(batches=item_batches)
def test_upsert_items(service, batches):
    send(service[1], "/bertrec.v1.Catalog/UpsertItems", [pb.UpsertItemsRequest(items=b) for b in batches])


@FUZZ
@given(ids=id_lists)
def test_delete_and_get_items(service, ids):
    send(service[1], "/bertrec.v1.Catalog/GetItems", pb.GetItemsRequest(item_ids=ids))
    send(service[1], "/bertrec.v1.Catalog/DeleteItems", pb.DeleteItemsRequest(item_ids=ids))


@FUZZ
@given(batch=st.lists(interactions, max_size=4), user_id=st.one_of(words, user_ids))
def test_record_interactions_and_forget_user(service, batch, user_id):
    send(service[1], "/bertrec.v1.Catalog/RecordInteractions", pb.RecordInteractionsRequest(interactions=batch))
    if user_id != USER:
        send(service[1], "/bertrec.v1.Catalog/ForgetUser", pb.ForgetUserRequest(user_id=user_id))


@FUZZ
@given(batch=st.one_of(st.lists(st.one_of(words, texts), max_size=4), st.just(["t"] * 501)), metadata=call_metadata)
def test_encode(service, batch, metadata):
    send(service[1], "/bertrec.v1.Embedder/Encode", pb.EncodeRequest(texts=batch), metadata)


@FUZZ
@given(
    path=st.one_of(st.text(max_size=30), st.sampled_from(["", ".", "..", "../..", "/etc", "a\x00b", "~", " "])),
    force=st.booleans(),
)
def test_load_model(service, path, force):
    send(service[1], "/bertrec.v1.Admin/LoadModel", pb.LoadModelRequest(model_path=path, force=force))


@RAW_FUZZ
@given(path=st.sampled_from(sorted(METHODS)), bodies=st.lists(raw_bodies, min_size=1, max_size=3))
def test_raw_request_bodies(service, path, bodies):
    streaming_in, _ = METHODS[path]
    body = bodies if streaming_in else bodies[0]
    code = call(service[1], path, body)
    assert code not in BROKEN, f"{path} answered {code.name} to raw {body!r}"[:2000]


def test_server_survived_and_kept_every_item(service):
    client, _, protected = service
    assert_intact(client, protected)
    assert [r.item_id for r in client.recommend(USER, k=5, exclude_seen=False)]
    # The fuzzing reached past validation, not only into it.
    assert {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND} <= set(seen_codes)
