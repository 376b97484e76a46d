from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_UNSPECIFIED: _ClassVar[Stage]
    STAGE_RETRIEVAL: _ClassVar[Stage]
    STAGE_RERANKED: _ClassVar[Stage]
STAGE_UNSPECIFIED: Stage
STAGE_RETRIEVAL: Stage
STAGE_RERANKED: Stage

class Item(_message.Message):
    __slots__ = ("id", "text", "metadata_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    id: int
    text: str
    metadata_json: str
    def __init__(self, id: _Optional[int] = ..., text: _Optional[str] = ..., metadata_json: _Optional[str] = ...) -> None: ...

class MetadataFilter(_message.Message):
    __slots__ = ("key", "values")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    key: str
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ...) -> None: ...

class UserQuery(_message.Message):
    __slots__ = ("user_id", "history_item_ids", "text")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    history_item_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    def __init__(self, user_id: _Optional[str] = ..., history_item_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ...) -> None: ...

class ScoredItem(_message.Message):
    __slots__ = ("item_id", "score", "rank", "because_item_id", "because_similarity", "item", "stage")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    BECAUSE_ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    BECAUSE_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    item_id: int
    score: float
    rank: int
    because_item_id: int
    because_similarity: float
    item: Item
    stage: Stage
    def __init__(self, item_id: _Optional[int] = ..., score: _Optional[float] = ..., rank: _Optional[int] = ..., because_item_id: _Optional[int] = ..., because_similarity: _Optional[float] = ..., item: _Optional[_Union[Item, _Mapping]] = ..., stage: _Optional[_Union[Stage, str]] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("request_id", "user", "k", "candidate_pool_size", "exclude_seen", "filters", "diversity", "include_items", "chunk_size", "exclude_item_ids", "retrieval_first")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_POOL_SIZE_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_FIRST_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    user: UserQuery
    k: int
    candidate_pool_size: int
    exclude_seen: bool
    filters: _containers.RepeatedCompositeFieldContainer[MetadataFilter]
    diversity: float
    include_items: bool
    chunk_size: int
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[int]
    retrieval_first: bool
    def __init__(self, request_id: _Optional[str] = ..., user: _Optional[_Union[UserQuery, _Mapping]] = ..., k: _Optional[int] = ..., candidate_pool_size: _Optional[int] = ..., exclude_seen: _Optional[bool] = ..., filters: _Optional[_Iterable[_Union[MetadataFilter, _Mapping]]] = ..., diversity: _Optional[float] = ..., include_items: _Optional[bool] = ..., chunk_size: _Optional[int] = ..., exclude_item_ids: _Optional[_Iterable[int]] = ..., retrieval_first: _Optional[bool] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("request_id", "items", "last", "stage")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    last: bool
    stage: Stage
    def __init__(self, request_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., last: _Optional[bool] = ..., stage: _Optional[_Union[Stage, str]] = ...) -> None: ...

class RerankRequest(_message.Message):
    __slots__ = ("request_id", "user", "candidate_item_ids", "candidate_texts", "diversity", "include_items", "chunk_size")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_TEXTS_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    user: UserQuery
    candidate_item_ids: _containers.RepeatedScalarFieldContainer[int]
    candidate_texts: _containers.RepeatedScalarFieldContainer[str]
    diversity: float
    include_items: bool
    chunk_size: int
    def __init__(self, request_id: _Optional[str] = ..., user: _Optional[_Union[UserQuery, _Mapping]] = ..., candidate_item_ids: _Optional[_Iterable[int]] = ..., candidate_texts: _Optional[_Iterable[str]] = ..., diversity: _Optional[float] = ..., include_items: _Optional[bool] = ..., chunk_size: _Optional[int] = ...) -> None: ...

class RerankResponse(_message.Message):
    __slots__ = ("request_id", "items", "last")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    last: bool
    def __init__(self, request_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., last: _Optional[bool] = ...) -> None: ...

class UpsertItemsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ...) -> None: ...

class UpsertItemsResponse(_message.Message):
    __slots__ = ("received", "inserted", "updated", "unchanged", "encoded")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    INSERTED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    received: int
    inserted: int
    updated: int
    unchanged: int
    encoded: int
    def __init__(self, received: _Optional[int] = ..., inserted: _Optional[int] = ..., updated: _Optional[int] = ..., unchanged: _Optional[int] = ..., encoded: _Optional[int] = ...) -> None: ...

class DeleteItemsRequest(_message.Message):
    __slots__ = ("item_ids",)
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, item_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class DeleteItemsResponse(_message.Message):
    __slots__ = ("deleted", "missing_item_ids")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    MISSING_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    missing_item_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, deleted: _Optional[int] = ..., missing_item_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class GetItemsRequest(_message.Message):
    __slots__ = ("item_ids",)
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, item_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class GetItemsResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ...) -> None: ...

class Interaction(_message.Message):
    __slots__ = ("user_id", "item_id", "timestamp", "weight")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_id: int
    timestamp: float
    weight: float
    def __init__(self, user_id: _Optional[str] = ..., item_id: _Optional[int] = ..., timestamp: _Optional[float] = ..., weight: _Optional[float] = ...) -> None: ...

class RecordInteractionsRequest(_message.Message):
    __slots__ = ("interactions",)
    INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    interactions: _containers.RepeatedCompositeFieldContainer[Interaction]
    def __init__(self, interactions: _Optional[_Iterable[_Union[Interaction, _Mapping]]] = ...) -> None: ...

class RecordInteractionsResponse(_message.Message):
    __slots__ = ("recorded",)
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    recorded: int
    def __init__(self, recorded: _Optional[int] = ...) -> None: ...

class ForgetUserRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class ForgetUserResponse(_message.Message):
    __slots__ = ("deleted_interactions",)
    DELETED_INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    deleted_interactions: int
    def __init__(self, deleted_interactions: _Optional[int] = ...) -> None: ...

class EncodeRequest(_message.Message):
    __slots__ = ("texts",)
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, texts: _Optional[_Iterable[str]] = ...) -> None: ...

class Vector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("vectors", "dim")
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    vectors: _containers.RepeatedCompositeFieldContainer[Vector]
    dim: int
    def __init__(self, vectors: _Optional[_Iterable[_Union[Vector, _Mapping]]] = ..., dim: _Optional[int] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReplicaInfo(_message.Message):
    __slots__ = ("name", "device", "node_id", "healthy", "encoded_texts", "mean_batch_size", "max_batch_size", "max_wait_s", "max_batch_tokens", "mean_queue_s", "runtime")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    ENCODED_TEXTS_FIELD_NUMBER: _ClassVar[int]
    MEAN_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_S_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MEAN_QUEUE_S_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    device: str
    node_id: str
    healthy: bool
    encoded_texts: int
    mean_batch_size: float
    max_batch_size: int
    max_wait_s: float
    max_batch_tokens: int
    mean_queue_s: float
    runtime: str
    def __init__(self, name: _Optional[str] = ..., device: _Optional[str] = ..., node_id: _Optional[str] = ..., healthy: _Optional[bool] = ..., encoded_texts: _Optional[int] = ..., mean_batch_size: _Optional[float] = ..., max_batch_size: _Optional[int] = ..., max_wait_s: _Optional[float] = ..., max_batch_tokens: _Optional[int] = ..., mean_queue_s: _Optional[float] = ..., runtime: _Optional[str] = ...) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("version", "model", "dim", "replicas", "index_type", "index_device", "index_size", "item_count", "user_count", "interaction_count", "store_version", "user_cache_hit_rate", "reranker", "reranker_ready")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    INDEX_TYPE_FIELD_NUMBER: _ClassVar[int]
    INDEX_DEVICE_FIELD_NUMBER: _ClassVar[int]
    INDEX_SIZE_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    USER_COUNT_FIELD_NUMBER: _ClassVar[int]
    INTERACTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    STORE_VERSION_FIELD_NUMBER: _ClassVar[int]
    USER_CACHE_HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    RERANKER_FIELD_NUMBER: _ClassVar[int]
    RERANKER_READY_FIELD_NUMBER: _ClassVar[int]
    version: str
    model: str
    dim: int
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaInfo]
    index_type: str
    index_device: str
    index_size: int
    item_count: int
    user_count: int
    interaction_count: int
    store_version: int
    user_cache_hit_rate: float
    reranker: str
    reranker_ready: bool
    def __init__(self, version: _Optional[str] = ..., model: _Optional[str] = ..., dim: _Optional[int] = ..., replicas: _Optional[_Iterable[_Union[ReplicaInfo, _Mapping]]] = ..., index_type: _Optional[str] = ..., index_device: _Optional[str] = ..., index_size: _Optional[int] = ..., item_count: _Optional[int] = ..., user_count: _Optional[int] = ..., interaction_count: _Optional[int] = ..., store_version: _Optional[int] = ..., user_cache_hit_rate: _Optional[float] = ..., reranker: _Optional[str] = ..., reranker_ready: _Optional[bool] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("model_path", "force")
    MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    model_path: str
    force: bool
    def __init__(self, model_path: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class LoadModelProgress(_message.Message):
    __slots__ = ("stage", "done", "total", "message")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    stage: str
    done: int
    total: int
    message: str
    def __init__(self, stage: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ConfigureBatchingRequest(_message.Message):
    __slots__ = ("max_batch_size", "max_wait_s", "max_batch_tokens")
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_S_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    max_batch_size: int
    max_wait_s: float
    max_batch_tokens: int
    def __init__(self, max_batch_size: _Optional[int] = ..., max_wait_s: _Optional[float] = ..., max_batch_tokens: _Optional[int] = ...) -> None: ...

class ConfigureBatchingResponse(_message.Message):
    __slots__ = ("replicas",)
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaInfo]
    def __init__(self, replicas: _Optional[_Iterable[_Union[ReplicaInfo, _Mapping]]] = ...) -> None: ...
