"""Domain dataclasses shared by the server, the workers and the SDK (no protobuf, no numpy)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any


class Stage(IntEnum):
    UNSPECIFIED = 0
    RETRIEVAL = 1
    RERANKED = 2


@dataclass(frozen=True)
class Item:
    id: int
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Interaction:
    user_id: str
    item_id: int
    timestamp: float = 0.0
    weight: float = 1.0


@dataclass(frozen=True)
class MetadataFilter:
    key: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class UserQuery:
    user_id: str = ""
    history_item_ids: tuple[int, ...] = ()
    text: str = ""


@dataclass(frozen=True)
class RecommendQuery:
    user: UserQuery
    k: int = 10
    candidate_pool_size: int = 0
    exclude_seen: bool = True
    filters: tuple[MetadataFilter, ...] = ()
    diversity: float = 0.0
    include_items: bool = False
    chunk_size: int = 0
    exclude_item_ids: tuple[int, ...] = ()
    request_id: str = ""
    retrieval_first: bool = False


@dataclass(frozen=True)
class RerankQuery:
    user: UserQuery
    candidate_item_ids: tuple[int, ...] = ()
    candidate_texts: tuple[str, ...] = ()
    diversity: float = 0.0
    include_items: bool = False
    chunk_size: int = 0
    request_id: str = ""


@dataclass(frozen=True)
class ScoredItem:
    item_id: int
    score: float
    rank: int
    because_item_id: int = 0
    because_similarity: float = 0.0
    item: Item | None = None
    stage: Stage = Stage.RETRIEVAL


@dataclass(frozen=True)
class UpsertSummary:
    received: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    encoded: int = 0

    def __add__(self, other: UpsertSummary) -> UpsertSummary:
        """Totals over the messages of one stream (or several streams)."""
        return UpsertSummary(
            self.received + other.received,
            self.inserted + other.inserted,
            self.updated + other.updated,
            self.unchanged + other.unchanged,
            self.encoded + other.encoded,
        )


@dataclass(frozen=True)
class DeleteSummary:
    deleted: int
    missing_item_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class ReplicaInfo:
    name: str
    device: str
    node_id: str = ""
    healthy: bool = True
    encoded_texts: int = 0
    mean_batch_size: float = 0.0
    max_batch_size: int = 0
    """Batching as it is now: texts per batch, the wait for company, padded tokens per model call."""
    max_wait_s: float = 0.0
    max_batch_tokens: int = 0
    mean_queue_s: float = 0.0
    """Mean time a text waited for its batch, since the replica started."""
    runtime: str = ""
    """What runs the model: "onnx" (ONNX Runtime, fp32 CPU replicas) or "torch"."""


@dataclass(frozen=True)
class ServiceInfo:
    version: str
    model: str
    dim: int
    replicas: tuple[ReplicaInfo, ...]
    index_type: str
    index_device: str
    index_size: int
    item_count: int
    user_count: int
    interaction_count: int
    store_version: int
    user_cache_hit_rate: float
    reranker: str = ""
    reranker_ready: bool = False
