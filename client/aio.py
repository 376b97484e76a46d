"""AsyncClient: the asyncio SDK, same methods as Client; streams are async iterators."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any

import grpc

from bertrec import convert
from bertrec.client import _build as b
from bertrec.client.sync import MAX_MESSAGE_BYTES
from bertrec.errors import DeadlineExceeded
from bertrec.types import (
    DeleteSummary,
    Interaction,
    Item,
    RecommendQuery,
    ReplicaInfo,
    ScoredItem,
    ServiceInfo,
    UpsertSummary,
)
from bertrec.v1 import recommender_pb2 as pb
from bertrec.v1 import recommender_pb2_grpc as pb_grpc


class AsyncClient:
    """See `Client`; create it inside a running event loop and `await close()` (or `async with`)."""

    def __init__(
        self,
        target: str | Sequence[str],
        *,
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        client_cert: bytes | None = None,
        client_key: bytes | None = None,
        timeout_s: float = 30.0,
        max_retries: int = 3,
        initial_backoff_s: float = 0.1,
    ):
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        address, balancing = b.channel_target(target)
        options += balancing
        if tls or root_certificates or client_cert:
            creds = b.channel_credentials(root_certificates, client_cert, client_key)
            self._channel = grpc.aio.secure_channel(address, creds, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(address, options=options)
        self.target = address
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.initial_backoff_s = initial_backoff_s
        self._metadata = b.call_metadata(token)
        self._recommender = pb_grpc.RecommenderStub(self._channel)
        self._catalog = pb_grpc.CatalogStub(self._channel)
        self._embedder = pb_grpc.EmbedderStub(self._channel)
        self._admin = pb_grpc.AdminStub(self._channel)
        self._health = self._channel.unary_unary(b.HEALTH_CHECK)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, invoke: Callable[[float], Any], timeout_s: float | None, replayable: bool = True) -> Any:
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        backoff = self.initial_backoff_s
        for attempt in range(self.max_retries + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                return await invoke(remaining)
            except grpc.RpcError as error:
                wait = backoff * (0.5 + random.random())
                if (
                    not replayable
                    or error.code() != grpc.StatusCode.UNAVAILABLE
                    or attempt >= self.max_retries
                    or deadline - time.monotonic() <= wait
                ):
                    raise b.translate(error) from None
                await asyncio.sleep(wait)
                backoff *= 2
        raise DeadlineExceeded("deadline passed while retrying an unavailable server")

    async def _unary(self, method: Callable, request: Any, timeout_s: float | None, request_id: str | None) -> Any:
        metadata = b.with_request_id(self._metadata, request_id)
        return await self._call(lambda t: method(request, timeout=t, metadata=metadata), timeout_s)

    async def _server_stream(
        self, method: Callable, request: Any, timeout_s: float | None, request_id: str | None
    ) -> AsyncIterator[Any]:
        metadata = b.with_request_id(self._metadata, request_id)

        # Retry only until the first message arrived; from then on errors reach the caller.
        async def first(t: float):
            call = method(request, timeout=t, metadata=metadata)
            iterator = call.__aiter__()
            try:
                return iterator, await iterator.__anext__()
            except StopAsyncIteration:
                return iterator, None

        iterator, response = await self._call(first, timeout_s)
        if response is None:
            return
        yield response
        try:
            async for response in iterator:
                yield response
        except grpc.RpcError as error:
            raise b.translate(error) from None

    async def recommend(
        self,
        user_id: str | int | None = None,
        *,
        history: Sequence[int] | None = None,
        text: str | None = None,
        k: int = 10,
        candidate_pool_size: int = 0,
        exclude_seen: bool = True,
        filters: Mapping[str, Any] | None = None,
        diversity: float = 0.0,
        include_items: bool = False,
        chunk_size: int = 0,
        exclude_item_ids: Sequence[int] = (),
        retrieval_first: bool = False,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> AsyncIterator[ScoredItem]:
        request = b.recommend_request(
            user_id=user_id,
            history=history,
            text=text,
            k=k,
            candidate_pool_size=candidate_pool_size,
            exclude_seen=exclude_seen,
            filters=filters,
            diversity=diversity,
            include_items=include_items,
            chunk_size=chunk_size,
            exclude_item_ids=exclude_item_ids,
            retrieval_first=retrieval_first,
        )
        async for response in self._server_stream(self._recommender.Recommend, request, timeout_s, request_id):
            for scored in response.items:
                yield convert.scored_from_pb(scored)

    async def recommend_many(
        self, queries: Iterable[RecommendQuery], timeout_s: float | None = None, *, request_id: str | None = None
    ) -> AsyncIterator[tuple[str, list[ScoredItem]]]:
        pending: dict[str, list[ScoredItem]] = {}
        call = self._recommender.RecommendStream(
            (convert.recommend_query_to_pb(q) for q in queries),
            timeout=timeout_s or self.timeout_s,
            metadata=b.with_request_id(self._metadata, request_id),
        )
        try:
            async for response in call:
                results = pending.setdefault(response.request_id, [])
                results.extend(convert.scored_from_pb(s) for s in response.items)
                if response.last:
                    yield response.request_id, pending.pop(response.request_id)
        except grpc.RpcError as error:
            raise b.translate(error) from None

    async def rerank(
        self,
        user_id: str | int | None = None,
        *,
        history: Sequence[int] | None = None,
        text: str | None = None,
        item_ids: Sequence[int] | None = None,
        texts: Sequence[str] | None = None,
        diversity: float = 0.0,
        include_items: bool = False,
        chunk_size: int = 0,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> AsyncIterator[ScoredItem]:
        request = b.rerank_request(
            user_id=user_id,
            history=history,
            text=text,
            item_ids=item_ids,
            texts=texts,
            diversity=diversity,
            include_items=include_items,
            chunk_size=chunk_size,
        )
        async for response in self._server_stream(self._recommender.Rerank, request, timeout_s, request_id):
            for scored in response.items:
                yield convert.scored_from_pb(scored)

    async def upsert_items(
        self,
        items: Iterable[Item | Mapping[str, Any]],
        batch_size: int = 256,
        timeout_s: float | None = None,
        *,
        request_id: str | None = None,
    ) -> UpsertSummary:
        metadata = b.with_request_id(self._metadata, request_id)

        async def invoke(t: float):
            return await self._catalog.UpsertItems(b.upsert_messages(items, batch_size), timeout=t, metadata=metadata)

        response = await self._call(invoke, timeout_s or max(self.timeout_s, 600.0), isinstance(items, Sequence))
        return convert.upsert_summary_from_pb(response)

    async def delete_items(
        self, item_ids: Sequence[int], timeout_s: float | None = None, *, request_id: str | None = None
    ) -> DeleteSummary:
        request = pb.DeleteItemsRequest(item_ids=list(item_ids))
        response = await self._unary(self._catalog.DeleteItems, request, timeout_s, request_id)
        return DeleteSummary(response.deleted, tuple(response.missing_item_ids))

    async def get_items(
        self, item_ids: Sequence[int], timeout_s: float | None = None, *, request_id: str | None = None
    ) -> list[Item]:
        request = pb.GetItemsRequest(item_ids=list(item_ids))
        response = await self._unary(self._catalog.GetItems, request, timeout_s, request_id)
        return [convert.item_from_pb(i) for i in response.items]

    async def record_interactions(
        self,
        interactions: Iterable[Interaction | Mapping[str, Any]],
        timeout_s: float | None = None,
        *,
        request_id: str | None = None,
    ) -> int:
        request = b.interactions_request(interactions)
        return (await self._unary(self._catalog.RecordInteractions, request, timeout_s, request_id)).recorded

    async def forget_user(
        self, user_id: str | int, timeout_s: float | None = None, *, request_id: str | None = None
    ) -> int:
        request = pb.ForgetUserRequest(user_id=str(user_id))
        return (await self._unary(self._catalog.ForgetUser, request, timeout_s, request_id)).deleted_interactions

    async def encode(
        self, texts: Sequence[str], timeout_s: float | None = None, *, request_id: str | None = None
    ) -> list[list[float]]:
        request = pb.EncodeRequest(texts=list(texts))
        response = await self._unary(self._embedder.Encode, request, timeout_s, request_id)
        return [list(v.values) for v in response.vectors]

    async def info(self, timeout_s: float | None = None, *, request_id: str | None = None) -> ServiceInfo:
        return convert.info_from_pb(await self._unary(self._admin.Info, pb.InfoRequest(), timeout_s, request_id))

    async def load_model(
        self, model_path: str, force: bool = False, timeout_s: float = 3600.0, *, request_id: str | None = None
    ) -> AsyncIterator[tuple[str, int, int, str]]:
        request = pb.LoadModelRequest(model_path=model_path, force=force)
        async for p in self._server_stream(self._admin.LoadModel, request, timeout_s, request_id):
            yield p.stage, p.done, p.total, p.message

    async def configure_batching(
        self,
        *,
        max_batch_size: int | None = None,
        max_wait_s: float | None = None,
        max_batch_tokens: int | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> tuple[ReplicaInfo, ...]:
        """Change the replicas' dynamic batching now, without a restart (None = keep that setting):
        texts per batch, the wait for company, padded tokens per model call. Returns every replica
        with its effective settings; InvalidRequest for values out of range (nothing changes then)."""
        request = convert.configure_batching_to_pb(max_batch_size, max_wait_s, max_batch_tokens)
        response = await self._unary(self._admin.ConfigureBatching, request, timeout_s, request_id)
        return tuple(convert.replica_info_from_pb(r) for r in response.replicas)

    async def is_serving(self, timeout_s: float = 2.0) -> bool:
        try:
            return b.health_status(await self._health(b"", timeout=timeout_s)) == b.SERVING
        except grpc.RpcError:
            return False
