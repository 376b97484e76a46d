"""Client: the blocking SDK. Streams come back as iterators of domain objects."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import grpc

from bertrec import convert
from bertrec.client import _build as b
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

MAX_MESSAGE_BYTES = 32 * 1024 * 1024


class Client:
    """Talks to one bertrec server, a load balancer, or several front ends given as a list of
    "ip:port" addresses (balanced round robin by gRPC; a dead one drops out of the rotation).

    Every call has a deadline (`timeout_s`, per call or the client default). Only UNAVAILABLE is
    retried, with jittered exponential backoff inside that deadline; a stream is retried only
    before its first message arrived, so a caller never sees a result twice.

    Every call also sends an `x-request-id` (`request_id=`, or a fresh one per call) that the
    server logs and echoes in its trailing metadata; pass your own to correlate logs.
    """

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
            self._channel = grpc.secure_channel(address, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
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

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Call mechanics
    def _attempts(self, timeout_s: float | None) -> Iterator[tuple[float, Callable[[grpc.RpcError], bool]]]:
        """Yields (remaining seconds, should_retry(error)) per attempt."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        backoff = self.initial_backoff_s
        for attempt in range(self.max_retries + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded("deadline passed while retrying an unavailable server")

            def should_retry(error: grpc.RpcError, attempt: int = attempt) -> bool:
                nonlocal backoff
                wait = backoff * (0.5 + random.random())
                if (
                    error.code() != grpc.StatusCode.UNAVAILABLE
                    or attempt >= self.max_retries
                    or deadline - time.monotonic() <= wait
                ):
                    return False
                time.sleep(wait)
                backoff *= 2
                return True

            yield remaining, should_retry

    def _unary(self, method: Callable, request: Any, timeout_s: float | None, request_id: str | None = None) -> Any:
        metadata = b.with_request_id(self._metadata, request_id)
        for remaining, should_retry in self._attempts(timeout_s):
            try:
                return method(request, timeout=remaining, metadata=metadata)
            except grpc.RpcError as error:
                if not should_retry(error):
                    raise b.translate(error) from None
        raise AssertionError("unreachable")

    def _server_stream(
        self, method: Callable, request: Any, timeout_s: float | None, request_id: str | None = None
    ) -> Iterator[Any]:
        metadata = b.with_request_id(self._metadata, request_id)
        for remaining, should_retry in self._attempts(timeout_s):
            started = False
            try:
                for response in method(request, timeout=remaining, metadata=metadata):
                    started = True
                    yield response
                return
            except grpc.RpcError as error:
                if started or not should_retry(error):
                    raise b.translate(error) from None

    # Recommendations
    def recommend(
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
    ) -> Iterator[ScoredItem]:
        """Top-k items in rank order, yielded as the chunks arrive. With `retrieval_first` and a
        trained re-ranker on the server, the retrieval-stage top-k arrives first
        (`stage == Stage.RETRIEVAL`), then the re-ranked top-k (`Stage.RERANKED`)."""
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
        for response in self._server_stream(self._recommender.Recommend, request, timeout_s, request_id):
            for scored in response.items:
                yield convert.scored_from_pb(scored)

    def recommend_many(
        self, queries: Iterable[RecommendQuery], timeout_s: float | None = None, *, request_id: str | None = None
    ) -> Iterator[tuple[str, list[ScoredItem]]]:
        """Bulk recommendations over one bidirectional stream: yields (request_id, results) as each
        request completes (not necessarily in request order)."""
        requests = (convert.recommend_query_to_pb(q) for q in queries)
        pending: dict[str, list[ScoredItem]] = {}
        try:
            call = self._recommender.RecommendStream(
                requests, timeout=timeout_s or self.timeout_s, metadata=b.with_request_id(self._metadata, request_id)
            )
            for response in call:
                results = pending.setdefault(response.request_id, [])
                results.extend(convert.scored_from_pb(s) for s in response.items)
                if response.last:
                    yield response.request_id, pending.pop(response.request_id)
        except grpc.RpcError as error:
            raise b.translate(error) from None

    def rerank(
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
    ) -> Iterator[ScoredItem]:
        """Re-score candidates (catalogue ids, or raw texts returned as ids -1, -2, ...)."""
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
        for response in self._server_stream(self._recommender.Rerank, request, timeout_s, request_id):
            for scored in response.items:
                yield convert.scored_from_pb(scored)

    # Catalogue
    def upsert_items(
        self,
        items: Iterable[Item | Mapping[str, Any]],
        batch_size: int = 256,
        timeout_s: float | None = None,
        *,
        request_id: str | None = None,
    ) -> UpsertSummary:
        """Stream items in; durable when this returns. Retried on UNAVAILABLE only for sequences
        (an iterator cannot be replayed); upserts are idempotent."""
        replayable = isinstance(items, Sequence)
        metadata = b.with_request_id(self._metadata, request_id)
        for remaining, should_retry in self._attempts(timeout_s or max(self.timeout_s, 600.0)):
            try:
                response = self._catalog.UpsertItems(
                    b.upsert_messages(items, batch_size), timeout=remaining, metadata=metadata
                )
                return convert.upsert_summary_from_pb(response)
            except grpc.RpcError as error:
                if not replayable or not should_retry(error):
                    raise b.translate(error) from None
        raise AssertionError("unreachable")

    def delete_items(
        self, item_ids: Sequence[int], timeout_s: float | None = None, *, request_id: str | None = None
    ) -> DeleteSummary:
        request = pb.DeleteItemsRequest(item_ids=list(item_ids))
        response = self._unary(self._catalog.DeleteItems, request, timeout_s, request_id)
        return DeleteSummary(response.deleted, tuple(response.missing_item_ids))

    def get_items(
        self, item_ids: Sequence[int], timeout_s: float | None = None, *, request_id: str | None = None
    ) -> list[Item]:
        request = pb.GetItemsRequest(item_ids=list(item_ids))
        response = self._unary(self._catalog.GetItems, request, timeout_s, request_id)
        return [convert.item_from_pb(i) for i in response.items]

    def record_interactions(
        self,
        interactions: Iterable[Interaction | Mapping[str, Any]],
        timeout_s: float | None = None,
        *,
        request_id: str | None = None,
    ) -> int:
        request = b.interactions_request(interactions)
        response = self._unary(self._catalog.RecordInteractions, request, timeout_s, request_id)
        return response.recorded

    def forget_user(self, user_id: str | int, timeout_s: float | None = None, *, request_id: str | None = None) -> int:
        request = pb.ForgetUserRequest(user_id=str(user_id))
        response = self._unary(self._catalog.ForgetUser, request, timeout_s, request_id)
        return response.deleted_interactions

    # Embeddings and admin
    def encode(
        self, texts: Sequence[str], timeout_s: float | None = None, *, request_id: str | None = None
    ) -> list[list[float]]:
        response = self._unary(self._embedder.Encode, pb.EncodeRequest(texts=list(texts)), timeout_s, request_id)
        return [list(v.values) for v in response.vectors]

    def info(self, timeout_s: float | None = None, *, request_id: str | None = None) -> ServiceInfo:
        return convert.info_from_pb(self._unary(self._admin.Info, pb.InfoRequest(), timeout_s, request_id))

    def load_model(
        self, model_path: str, force: bool = False, timeout_s: float = 3600.0, *, request_id: str | None = None
    ) -> Iterator[tuple[str, int, int, str]]:
        """Hot-swap the served encoder; yields (stage, done, total, message) until "done"."""
        request = pb.LoadModelRequest(model_path=model_path, force=force)
        for p in self._server_stream(self._admin.LoadModel, request, timeout_s, request_id):
            yield p.stage, p.done, p.total, p.message

    def configure_batching(
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
        response = self._unary(self._admin.ConfigureBatching, request, timeout_s, request_id)
        return tuple(convert.replica_info_from_pb(r) for r in response.replicas)

    def is_serving(self, timeout_s: float = 2.0) -> bool:
        try:
            return b.health_status(self._health(b"", timeout=timeout_s)) == b.SERVING
        except grpc.RpcError:
            return False

    def wait_until_serving(self, timeout_s: float = 120.0, poll_s: float = 0.2) -> None:
        """Poll the standard health service until the server reports SERVING."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.is_serving():
                return
            time.sleep(poll_s)
        raise DeadlineExceeded(f"{self.target} was not SERVING within {timeout_s:.0f}s")
