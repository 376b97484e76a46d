"""The one place protobuf meets the domain: pb messages <-> bertrec.types dataclasses."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from bertrec import types as t
from bertrec.errors import InvalidRequest
from bertrec.v1 import recommender_pb2 as pb


def encode_response_to_pb(vectors, dim: int) -> pb.EncodeResponse:
    """EncodeResponse from a (n, dim) float array, built from its wire bytes.

    `Vector(values=row.tolist())` turns every float into a Python object and back (~15 us a
    vector); the wire format of a packed `repeated float` is the array's own little-endian
    bytes, which protobuf parses with one copy (~1.5 us a vector)."""
    if vectors.ndim != 2:  # a 1-D array would pass as n one-float vectors
        raise ValueError(f"expected an (n, dim) array, got shape {vectors.shape}")
    parts = []
    for row in vectors.astype("<f4", copy=False):
        raw = row.tobytes()
        vector = b"\x0a" + _varint(len(raw)) + raw  # Vector.values: field 1, length-delimited
        parts.append(b"\x0a" + _varint(len(vector)) + vector)  # EncodeResponse.vectors: field 1
    response = pb.EncodeResponse.FromString(b"".join(parts))
    response.dim = dim
    return response


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def metadata_from_json(text: str, item_id: int | None = None) -> dict[str, Any]:
    if not text:
        return {}
    where = f" of item {item_id}" if item_id is not None else ""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidRequest(f"metadata_json{where} is not valid JSON: {exc}") from None
    except RecursionError:  # '[[[[...' deeper than the parser's stack
        raise InvalidRequest(f"metadata_json{where} is nested too deeply") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"metadata_json{where} must be a JSON object, got {type(value).__name__}")
    return value


def item_from_pb(msg: pb.Item) -> t.Item:
    return t.Item(id=msg.id, text=msg.text, metadata=metadata_from_json(msg.metadata_json, msg.id))


def item_to_pb(item: t.Item) -> pb.Item:
    return pb.Item(
        id=item.id,
        text=item.text,
        metadata_json=json.dumps(item.metadata, ensure_ascii=False) if item.metadata else "",
    )


def user_from_pb(msg: pb.UserQuery) -> t.UserQuery:
    return t.UserQuery(user_id=msg.user_id, history_item_ids=tuple(msg.history_item_ids), text=msg.text)


def user_to_pb(user: t.UserQuery) -> pb.UserQuery:
    return pb.UserQuery(user_id=user.user_id, history_item_ids=list(user.history_item_ids), text=user.text)


def recommend_query_from_pb(msg: pb.RecommendRequest) -> t.RecommendQuery:
    return t.RecommendQuery(
        user=user_from_pb(msg.user),
        k=msg.k,
        candidate_pool_size=msg.candidate_pool_size,
        exclude_seen=msg.exclude_seen if msg.HasField("exclude_seen") else True,
        filters=tuple(t.MetadataFilter(f.key, tuple(f.values)) for f in msg.filters),
        diversity=msg.diversity,
        include_items=msg.include_items,
        chunk_size=msg.chunk_size,
        exclude_item_ids=tuple(msg.exclude_item_ids),
        request_id=msg.request_id,
        retrieval_first=msg.retrieval_first,
    )


def recommend_query_to_pb(q: t.RecommendQuery) -> pb.RecommendRequest:
    return pb.RecommendRequest(
        request_id=q.request_id,
        user=user_to_pb(q.user),
        k=q.k,
        candidate_pool_size=q.candidate_pool_size,
        exclude_seen=q.exclude_seen,
        filters=[pb.MetadataFilter(key=f.key, values=list(f.values)) for f in q.filters],
        diversity=q.diversity,
        include_items=q.include_items,
        chunk_size=q.chunk_size,
        exclude_item_ids=list(q.exclude_item_ids),
        retrieval_first=q.retrieval_first,
    )


def rerank_query_from_pb(msg: pb.RerankRequest) -> t.RerankQuery:
    return t.RerankQuery(
        user=user_from_pb(msg.user),
        candidate_item_ids=tuple(msg.candidate_item_ids),
        candidate_texts=tuple(msg.candidate_texts),
        diversity=msg.diversity,
        include_items=msg.include_items,
        chunk_size=msg.chunk_size,
        request_id=msg.request_id,
    )


def rerank_query_to_pb(q: t.RerankQuery) -> pb.RerankRequest:
    return pb.RerankRequest(
        request_id=q.request_id,
        user=user_to_pb(q.user),
        candidate_item_ids=list(q.candidate_item_ids),
        candidate_texts=list(q.candidate_texts),
        diversity=q.diversity,
        include_items=q.include_items,
        chunk_size=q.chunk_size,
    )


def scored_to_pb(s: t.ScoredItem) -> pb.ScoredItem:
    msg = pb.ScoredItem(
        item_id=s.item_id,
        score=s.score,
        rank=s.rank,
        because_item_id=s.because_item_id,
        because_similarity=s.because_similarity,
        stage=int(s.stage),
    )
    if s.item is not None:
        msg.item.CopyFrom(item_to_pb(s.item))
    return msg


def scored_from_pb(msg: pb.ScoredItem) -> t.ScoredItem:
    return t.ScoredItem(
        item_id=msg.item_id,
        score=msg.score,
        rank=msg.rank,
        because_item_id=msg.because_item_id,
        because_similarity=msg.because_similarity,
        item=item_from_pb(msg.item) if msg.HasField("item") else None,
        stage=t.Stage(msg.stage),
    )


def interaction_from_pb(msg: pb.Interaction) -> t.Interaction:
    return t.Interaction(
        user_id=msg.user_id,
        item_id=msg.item_id,
        timestamp=msg.timestamp,
        weight=msg.weight if msg.HasField("weight") else 1.0,
    )


def interaction_to_pb(x: t.Interaction) -> pb.Interaction:
    return pb.Interaction(user_id=x.user_id, item_id=x.item_id, timestamp=x.timestamp, weight=x.weight)


def upsert_summary_to_pb(s: t.UpsertSummary) -> pb.UpsertItemsResponse:
    return pb.UpsertItemsResponse(
        received=s.received, inserted=s.inserted, updated=s.updated, unchanged=s.unchanged, encoded=s.encoded
    )


def upsert_summary_from_pb(msg: pb.UpsertItemsResponse) -> t.UpsertSummary:
    return t.UpsertSummary(msg.received, msg.inserted, msg.updated, msg.unchanged, msg.encoded)


# ReplicaInfo's dataclass fields and pb fields have the same names.
def replica_info_to_pb(r: t.ReplicaInfo) -> pb.ReplicaInfo:
    return pb.ReplicaInfo(**dataclasses.asdict(r))


def replica_info_from_pb(r: pb.ReplicaInfo) -> t.ReplicaInfo:
    return t.ReplicaInfo(**{f.name: getattr(r, f.name) for f in dataclasses.fields(t.ReplicaInfo)})


def info_to_pb(info: t.ServiceInfo) -> pb.InfoResponse:
    return pb.InfoResponse(
        version=info.version,
        model=info.model,
        dim=info.dim,
        replicas=[replica_info_to_pb(r) for r in info.replicas],
        index_type=info.index_type,
        index_device=info.index_device,
        index_size=info.index_size,
        item_count=info.item_count,
        user_count=info.user_count,
        interaction_count=info.interaction_count,
        store_version=info.store_version,
        user_cache_hit_rate=info.user_cache_hit_rate,
        reranker=info.reranker,
        reranker_ready=info.reranker_ready,
    )


def info_from_pb(msg: pb.InfoResponse) -> t.ServiceInfo:
    return t.ServiceInfo(
        version=msg.version,
        model=msg.model,
        dim=msg.dim,
        replicas=tuple(replica_info_from_pb(r) for r in msg.replicas),
        index_type=msg.index_type,
        index_device=msg.index_device,
        index_size=msg.index_size,
        item_count=msg.item_count,
        user_count=msg.user_count,
        interaction_count=msg.interaction_count,
        store_version=msg.store_version,
        user_cache_hit_rate=msg.user_cache_hit_rate,
        reranker=msg.reranker,
        reranker_ready=msg.reranker_ready,
    )


def configure_batching_to_pb(
    max_batch_size: int | None, max_wait_s: float | None, max_batch_tokens: int | None
) -> pb.ConfigureBatchingRequest:
    """None = leave that setting as it is (the field stays unset)."""
    given = {"max_batch_size": max_batch_size, "max_wait_s": max_wait_s, "max_batch_tokens": max_batch_tokens}
    return pb.ConfigureBatchingRequest(**{k: v for k, v in given.items() if v is not None})


def configure_batching_from_pb(msg: pb.ConfigureBatchingRequest) -> dict[str, Any]:
    """{max_batch_size, max_wait_s, max_batch_tokens}, None for each field the caller left unset."""
    fields = ("max_batch_size", "max_wait_s", "max_batch_tokens")
    return {f: getattr(msg, f) if msg.HasField(f) else None for f in fields}
