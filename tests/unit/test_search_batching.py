"""SearchBatcher: concurrent searches share calls, each caller gets exactly its own answer."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time

import numpy as np
import pytest

from bertrec.server.search_batching import SearchBatcher

rng = np.random.default_rng(0)
VECTORS = rng.standard_normal((500, 16)).astype(np.float32)
VECTORS /= np.linalg.norm(VECTORS, axis=1, keepdims=True)  # each vector its own nearest neighbour


def brute_force(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ VECTORS.T
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, 1), ids.astype(np.int64)


def test_concurrent_searches_share_calls_and_get_their_own_top_k():
    calls: list[int] = []
    lock = threading.Lock()

    def slow_search(queries, k):
        with lock:
            calls.append(len(queries))
        time.sleep(0.05)  # the first call is still running when the others arrive
        return brute_force(queries, k)

    queries = rng.standard_normal((20, 16)).astype(np.float32)
    ks = [1 + i % 7 for i in range(20)]

    async def run():
        batcher = SearchBatcher(slow_search, max_batch=8)
        first = asyncio.ensure_future(batcher.search(queries[0], ks[0]))
        await asyncio.sleep(0.01)  # the first search is running; the rest arrive meanwhile
        rest = [batcher.search(q, k) for q, k in zip(queries[1:], ks[1:])]
        return [await first, *await asyncio.gather(*rest)], batcher

    answers, batcher = asyncio.run(run())
    for query, k, (scores, ids) in zip(queries, ks, answers):
        want_scores, want_ids = brute_force(query[None, :], k)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-5)
    assert calls[0] == 1  # a lone first request is not held back
    assert max(calls) <= 8 and sum(calls) == 20
    assert len(calls) < 20 and batcher.calls == len(calls)


def test_a_failed_call_fails_its_members_and_the_next_batch_still_runs():
    state = {"fail": True}

    def flaky(queries, k):
        if state.pop("fail", False):
            time.sleep(0.02)
            raise RuntimeError("shard lost")
        return brute_force(queries, k)

    async def run():
        batcher = SearchBatcher(flaky)
        first = asyncio.ensure_future(batcher.search(VECTORS[0], 3))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(batcher.search(VECTORS[1], 3))
        with pytest.raises(RuntimeError, match="shard lost"):
            await first
        return await second

    _, ids = asyncio.run(run())
    assert ids[0, 0] == 1


def test_the_work_after_a_search_runs_in_its_worker_thread_and_fails_alone():
    """`then` gets exactly its caller's rows, runs off the event loop's thread, and an error in one
    caller's `then` is that caller's alone."""
    release = threading.Event()

    def gated_search(queries, k):
        release.wait(5)
        return brute_force(queries, k)

    def top_id_and_thread(scores, ids):
        return int(ids[0, 0]), threading.get_ident()

    def broken(scores, ids):
        raise ValueError("bad filter")

    async def run():
        batcher = SearchBatcher(gated_search)
        first = asyncio.ensure_future(batcher.search(VECTORS[0], 3, then=top_id_and_thread))
        await asyncio.sleep(0.01)  # the first batch is in flight; the next two leave together
        second = asyncio.ensure_future(batcher.search(VECTORS[7], 3, then=top_id_and_thread))
        third = asyncio.ensure_future(batcher.search(VECTORS[9], 3, then=broken))
        await asyncio.sleep(0.01)
        release.set()
        with pytest.raises(ValueError, match="bad filter"):
            await third
        return await first, await second, batcher.calls, threading.get_ident()

    first, second, calls, loop_thread = asyncio.run(run())
    assert (first[0], second[0]) == (0, 7)
    assert first[1] != loop_thread and second[1] != loop_thread
    assert calls == 2


def test_each_follow_up_runs_in_its_callers_context_and_a_caller_that_gave_up_gets_none():
    gate = threading.Event()
    ran: list[str] = []
    request: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="")

    def gated_search(queries, k):
        gate.wait(5)
        return brute_force(queries, k)

    def then(scores, ids):
        ran.append(request.get())
        return request.get(), int(ids[0, 0])

    async def ask(name, row):
        request.set(name)  # each caller's own context reaches its `then`, in the worker thread
        return await batcher.search(VECTORS[row], 3, then=then)

    async def run():
        first = asyncio.ensure_future(ask("first", 0))
        await asyncio.sleep(0.01)  # in flight at the gate: it gives up while FAISS runs
        second = asyncio.ensure_future(ask("second", 2))
        third = asyncio.ensure_future(ask("third", 3))
        await asyncio.sleep(0.01)
        first.cancel()
        gate.set()
        return await second, await third, first.cancelled()

    batcher = SearchBatcher(gated_search)
    second, third, first_cancelled = asyncio.run(run())
    assert (second, third) == (("second", 2), ("third", 3))
    assert first_cancelled and ran == ["second", "third"] and batcher.calls == 2
