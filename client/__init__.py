"""bertrec SDK: sync and asyncio clients returning domain types. Needs only grpcio and protobuf."""

from bertrec.client.aio import AsyncClient
from bertrec.client.sync import Client
from bertrec.errors import (
    BertrecError,
    DeadlineExceeded,
    InvalidRequest,
    NotFound,
    NotReady,
    Overloaded,
    Unauthenticated,
)
from bertrec.types import Interaction, Item, ScoredItem, ServiceInfo, UpsertSummary

__all__ = [
    "AsyncClient",
    "BertrecError",
    "Client",
    "DeadlineExceeded",
    "Interaction",
    "InvalidRequest",
    "Item",
    "NotFound",
    "NotReady",
    "Overloaded",
    "ScoredItem",
    "ServiceInfo",
    "Unauthenticated",
    "UpsertSummary",
]
