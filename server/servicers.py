"""Thin gRPC servicers: decode, validate, call the engine, convert back, stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

import grpc

from bertrec import convert, stages
from bertrec.errors import InvalidRequest, NotFound, NotReady
from bertrec.server import validation
from bertrec.server.errors import grpc_errors
from bertrec.server.registration import decoded, decoded_stream
from bertrec.server.state import ServiceState
from bertrec.types import ScoredItem, UpsertSummary
from bertrec.v1 import recommender_pb2 as pb


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.time() + remaining


def _chunks(results: Sequence[ScoredItem], size: int) -> list[Sequence[ScoredItem]]:
    return [results[i : i + size] for i in range(0, len(results), size)] or [[]]


class _Base:
    def __init__(self, state: ServiceState):
        self.state = state
        self.config = state.config.server

    def ready(self):
        if not self.state.ready:
            raise NotReady("the service is still loading its model and index; retry shortly")
        return self.state


class RecommenderServicer(_Base):
    async def _recommend_responses(self, request: pb.RecommendRequest, context) -> AsyncIterator:
        query = convert.recommend_query_from_pb(request)
        validation.check_recommend(query, self.config)
        state = self.ready()
        # "rank" is what the engine does besides its own stages (user vector, encode): FAISS
        # search, filters, exact re-scoring, MMR, explanations.
        # With retrieval_first the engine yields two lists; each is streamed as soon as it exists.
        lists = state.recommender.recommend_stages(query, deadline_of(context))
        while True:
            with stages.stage("rank"):
                step = await anext(lists, None)
            if step is None:
                break
            results, final = step
            with stages.stage("stream"):
                for response in self._recommend_chunks(query, results, final):
                    yield response

    def _recommend_chunks(self, query, results: list, final: bool):
        chunks = _chunks(results, query.chunk_size or self.config.chunk_size)
        stage = int(results[0].stage) if results else pb.STAGE_RETRIEVAL
        for n, chunk in enumerate(chunks):
            yield pb.RecommendResponse(
                request_id=query.request_id,
                items=[convert.scored_to_pb(s) for s in chunk],
                last=final and n == len(chunks) - 1,
                stage=stage,
            )

    @grpc_errors
    async def Recommend(self, request, context):
        async for response in self._recommend_responses(decoded(request), context):
            yield response

    @grpc_errors
    async def RecommendStream(self, request_iterator, context):
        # Requests are answered concurrently; each response carries its request_id. A bad request
        # ends the whole stream with its status (a bidirectional stream has one status).
        queue: asyncio.Queue = asyncio.Queue(maxsize=64)
        done = object()

        async def answer(request):
            async for response in self._recommend_responses(request, context):
                await queue.put(response)

        async def pump():
            tasks = []
            try:
                async for request in decoded_stream(request_iterator):
                    tasks.append(asyncio.ensure_future(answer(request)))
                await asyncio.gather(*tasks)
                await queue.put(done)
            except BaseException as exc:
                for task in tasks:
                    task.cancel()
                await queue.put(exc)

        pumper = asyncio.ensure_future(pump())
        try:
            while True:
                item = await queue.get()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            pumper.cancel()

    @grpc_errors
    async def Rerank(self, request, context):
        query = convert.rerank_query_from_pb(decoded(request))
        validation.check_rerank(query, self.config)
        state = self.ready()
        with stages.stage("rank"):
            results = await state.recommender.rerank(query, deadline_of(context))
        chunks = _chunks(results, query.chunk_size or self.config.chunk_size)
        with stages.stage("stream"):
            for n, chunk in enumerate(chunks):
                yield pb.RerankResponse(
                    request_id=query.request_id,
                    items=[convert.scored_to_pb(s) for s in chunk],
                    last=n == len(chunks) - 1,
                )


class CatalogServicer(_Base):
    @grpc_errors
    async def UpsertItems(self, request_iterator, context):
        totals = UpsertSummary()
        async for message in decoded_stream(request_iterator):
            try:
                items = [convert.item_from_pb(m) for m in message.items]
                validation.check_items(items, self.config)
            except InvalidRequest as exc:
                raise InvalidRequest(f"{exc} ({totals.received} earlier items in this stream were stored)") from None
            if not items:
                continue
            totals = totals + await self.ready().catalog.upsert(items, deadline_of(context))
        return convert.upsert_summary_to_pb(totals)

    @grpc_errors
    async def DeleteItems(self, request, context):
        ids = list(decoded(request).item_ids)
        validation.check_ids(ids, self.config)
        summary = await self.ready().catalog.delete(ids)
        return pb.DeleteItemsResponse(deleted=summary.deleted, missing_item_ids=list(summary.missing_item_ids))

    @grpc_errors
    async def GetItems(self, request, context):
        ids = list(decoded(request).item_ids)
        validation.check_ids(ids, self.config)
        items = await asyncio.to_thread(self.ready().catalog.store.get_items, ids)
        missing = [i for i in ids if i not in items]
        if missing:
            raise NotFound(f"unknown item ids: {missing[:10]}")
        return pb.GetItemsResponse(items=[convert.item_to_pb(items[i]) for i in ids])

    @grpc_errors
    async def RecordInteractions(self, request, context):
        interactions = [convert.interaction_from_pb(x) for x in decoded(request).interactions]
        validation.check_interactions(interactions, self.config)
        store = self.ready().catalog.store
        ids = list({x.item_id for x in interactions})
        known = await asyncio.to_thread(store.existing_ids, ids)
        missing = sorted(set(ids) - known)
        if missing:
            raise NotFound(f"interactions name unknown item ids: {missing[:10]}; nothing was recorded")
        recorded = await asyncio.to_thread(store.record_interactions, interactions)
        return pb.RecordInteractionsResponse(recorded=recorded)

    @grpc_errors
    async def ForgetUser(self, request, context):
        user_id = decoded(request).user_id
        validation.check_user_id(user_id)
        deleted = await asyncio.to_thread(self.ready().catalog.store.forget_user, user_id)
        return pb.ForgetUserResponse(deleted_interactions=deleted)


class EmbedderServicer(_Base):
    @grpc_errors
    async def Encode(self, request, context):
        texts = list(decoded(request).texts)
        validation.check_texts(texts, self.config)
        state = self.ready()
        vectors = await state.pool.encode(texts, deadline_of(context))
        return convert.encode_response_to_pb(vectors, state.pool.dim)


class AdminServicer(_Base):
    @grpc_errors
    async def Info(self, request, context):
        decoded(request)
        return convert.info_to_pb(await self.ready().info())

    @grpc_errors
    async def LoadModel(self, request, context):
        request = decoded(request)
        validation.check_model_path(request.model_path)
        async for stage, done, total, message in self.ready().load_model(request.model_path, request.force):
            yield pb.LoadModelProgress(stage=stage, done=done, total=total, message=message)

    @grpc_errors
    async def ConfigureBatching(self, request, context):
        change = convert.configure_batching_from_pb(decoded(request))
        validation.check_batching_change(change, self.state.config)
        replicas = await self.ready().configure_batching(**change)
        return pb.ConfigureBatchingResponse(replicas=[convert.replica_info_to_pb(r) for r in replicas])
