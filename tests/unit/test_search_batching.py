"""SearchBatcher: concurrent searches share calls, each caller gets exactly its own answer."""

from __future__ import annotations

import asyncio
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
