"""Request building and response reading shared by the sync and asyncio clients."""

from __future__ import annotations

import ipaddress
import json
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import grpc

from bertrec import convert
from bertrec.errors import BertrecError, error_for_code
from bertrec.types import Interaction, Item, MetadataFilter, RecommendQuery, RerankQuery, UserQuery
from bertrec.v1 import recommender_pb2 as pb

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
SERVING = 1  # grpc.health.v1.HealthCheckResponse.ServingStatus.SERVING
REQUEST_ID_KEY = "x-request-id"


def user_query(user_id: str | int | None, history: Sequence[int] | None, text: str | None) -> UserQuery:
    return UserQuery(
        user_id="" if user_id is None else str(user_id),
        history_item_ids=tuple(int(i) for i in history or ()),
        text=text or "",
    )


def filters_of(filters: Mapping[str, Any] | None) -> tuple[MetadataFilter, ...]:
    out = []
    for key, value in (filters or {}).items():
        values = value if isinstance(value, (list, tuple, set)) else [value]
        out.append(MetadataFilter(key, tuple(_render(v) for v in values)))
    return tuple(out)


def _render(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def recommend_request(**kw: Any) -> pb.RecommendRequest:
    query = RecommendQuery(
        user=user_query(kw.pop("user_id", None), kw.pop("history", None), kw.pop("text", None)),
        filters=filters_of(kw.pop("filters", None)),
        exclude_item_ids=tuple(kw.pop("exclude_item_ids", ()) or ()),
        **kw,
    )
    return convert.recommend_query_to_pb(query)


def rerank_request(**kw: Any) -> pb.RerankRequest:
    query = RerankQuery(
        user=user_query(kw.pop("user_id", None), kw.pop("history", None), kw.pop("text", None)),
        candidate_item_ids=tuple(kw.pop("item_ids", None) or ()),
        candidate_texts=tuple(kw.pop("texts", None) or ()),
        **kw,
    )
    return convert.rerank_query_to_pb(query)


def item_of(item: Item | Mapping[str, Any]) -> pb.Item:
    if isinstance(item, Item):
        return convert.item_to_pb(item)
    metadata = item.get("metadata") or {}
    return pb.Item(
        id=int(item["id"]),
        text=str(item["text"]),
        metadata_json=metadata if isinstance(metadata, str) else json.dumps(metadata, ensure_ascii=False),
    )


def upsert_messages(items: Iterable[Item | Mapping[str, Any]], batch_size: int) -> Iterator[pb.UpsertItemsRequest]:
    batch: list[pb.Item] = []
    for item in items:
        batch.append(item_of(item))
        if len(batch) >= batch_size:
            yield pb.UpsertItemsRequest(items=batch)
            batch = []
    if batch:
        yield pb.UpsertItemsRequest(items=batch)


def interactions_request(interactions: Iterable[Interaction | Mapping[str, Any]]) -> pb.RecordInteractionsRequest:
    out = []
    for x in interactions:
        if isinstance(x, Interaction):
            out.append(convert.interaction_to_pb(x))
        else:
            out.append(
                pb.Interaction(
                    user_id=str(x["user_id"]),
                    item_id=int(x["item_id"]),
                    timestamp=float(x.get("timestamp", 0.0)),
                    weight=float(x.get("weight", 1.0)),
                )
            )
    return pb.RecordInteractionsRequest(interactions=out)


def translate(error: grpc.RpcError) -> BertrecError:
    exc = error_for_code(error.code(), error.details() or "")
    exc.__cause__ = error
    return exc


def health_status(response: bytes) -> int:
    """Parse grpc.health.v1.HealthCheckResponse without its generated code (field 1, varint)."""
    if len(response) >= 2 and response[0] == 0x08:
        return response[1]
    return 0


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def new_request_id() -> str:
    return uuid.uuid4().hex


def with_request_id(metadata: tuple[tuple[str, str], ...], request_id: str | None) -> tuple[tuple[str, str], ...]:
    """Every call carries an `x-request-id` (the caller's, or a fresh one); retries reuse it, so
    the server's log shows one logical request, and its trailing metadata echoes it back."""
    return (*metadata, (REQUEST_ID_KEY, request_id or new_request_id()))


def channel_credentials(
    root_certificates: bytes | None, client_cert: bytes | None, client_key: bytes | None
) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates, client_key, client_cert)


def channel_target(target: str | Sequence[str]) -> tuple[str, list[tuple[str, Any]]]:
    """The gRPC target string and channel options for one address or several front ends.

    Several "ip:port" addresses become one channel that balances calls round robin over them
    (gRPC's own client-side balancing): a front end that dies drops out of the rotation, and
    the calls it held fail UNAVAILABLE, which the SDK retries on the others. A "dns:///name:port"
    target balances over every address the name resolves to.
    """
    if isinstance(target, str):
        options = [("grpc.lb_policy_name", "round_robin")] if target.startswith("dns:") else []
        return target, options
    addresses = list(target)
    if not addresses:
        raise ValueError("no server address given")
    if len(addresses) == 1:
        return addresses[0], []
    families = set()
    for address in addresses:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{address!r} has no port")
        try:
            families.add(ipaddress.ip_address(host.strip("[]")).version)
        except ValueError:
            raise ValueError(
                f"{address!r}: several targets must be ip:port addresses; "
                "for a host name use one 'dns:///name:port' target"
            ) from None
    if len(families) > 1:
        raise ValueError("several targets must all be IPv4 or all IPv6")
    scheme = "ipv4" if families == {4} else "ipv6"
    return f"{scheme}:{','.join(addresses)}", [("grpc.lb_policy_name", "round_robin")]
