"""Batcher: batches form under concurrency, lone requests do not wait, overload and failures propagate."""

import asyncio
import time

import numpy as np
import pytest

from bertrec.errors import DeadlineExceeded, Overloaded
from bertrec.workers.batching import Batcher


class RecordingEncoder:
    def __init__(self, delay_s=0.0, fail=False):
        self.calls: list[list[str]] = []
        self.delay_s = delay_s
        self.fail = fail

    def __call__(self, texts):
        self.calls.append(list(texts))
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("model exploded")
        return np.array([[float(len(t)), float(hash(t) % 97)] for t in texts], dtype=np.float32)


def run(coro):
    return asyncio.run(coro)


def test_results_match_each_caller_in_order():
    enc = RecordingEncoder()

    async def main():
        b = Batcher(enc, max_batch_size=8, max_wait_s=0.01)
        texts = [[f"t{i}-{j}" * (j + 1) for j in range(3)] for i in range(10)]
        results = await asyncio.gather(*(b.submit(t) for t in texts))
        for t, r in zip(texts, results):
            np.testing.assert_array_equal(r, enc(t))

    run(main())


def test_concurrent_callers_share_batches():
    enc = RecordingEncoder(delay_s=0.02)

    async def main():
        b = Batcher(enc, max_batch_size=16, max_wait_s=0.01)
        await asyncio.gather(*(b.submit([f"text {i}"]) for i in range(32)))
        return b

    b = run(main())
    assert len(enc.calls) < 32 / 4  # far fewer model calls than callers
    assert max(len(c) for c in enc.calls) <= 16
    assert b.stats.texts == 32 and b.stats.mean_batch_size > 4


def test_lone_request_does_not_wait():
    enc = RecordingEncoder()

    async def main():
        b = Batcher(enc, max_batch_size=64, max_wait_s=0.5)
        started = time.monotonic()
        await b.submit(["only one"])
        return time.monotonic() - started

    assert run(main()) < 0.25  # well under max_wait_s


def test_full_queue_raises_overloaded():
    enc = RecordingEncoder(delay_s=0.05)

    async def main():
        b = Batcher(enc, max_batch_size=2, max_wait_s=0.0, max_queue=4)
        first = asyncio.ensure_future(b.submit(["a", "b", "c", "d"]))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await b.submit(["e", "f", "g", "h", "i"])
        await first

    run(main())


def test_failure_fails_every_waiter_of_the_batch():
    enc = RecordingEncoder(fail=True)

    async def main():
        b = Batcher(enc, max_batch_size=8, max_wait_s=0.01)
        results = await asyncio.gather(*(b.submit([f"x{i}"]) for i in range(4)), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        enc.fail = False
        assert (await b.submit(["after"])).shape == (1, 2)  # the batcher survives

    run(main())


def test_expired_request_is_skipped_not_encoded():
    enc = RecordingEncoder()

    async def main():
        b = Batcher(enc, max_batch_size=8, max_wait_s=0.0)
        with pytest.raises(DeadlineExceeded):
            await b.submit(["late"], deadline=time.time() - 1)
        return b

    b = run(main())
    assert enc.calls == [] and b.stats.expired == 1


def test_configure_at_run_time():
    b = Batcher(RecordingEncoder(), max_batch_size=8, max_wait_s=0.01)
    b.configure(max_batch_size=32, max_wait_s=0.002)
    assert (b.max_batch_size, b.max_wait_s) == (32, 0.002)
