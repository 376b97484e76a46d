"""Coalescer: concurrent small requests share remote calls; results and errors stay per caller."""

import asyncio

import numpy as np
import pytest

from bertrec.errors import Overloaded
from bertrec.workers.coalescing import Coalescer


class RecordingSend:
    def __init__(self, fail_on: str | None = None):
        self.calls: list[list[str]] = []
        self.fail_on = fail_on

    async def __call__(self, texts, deadline):
        self.calls.append(list(texts))
        await asyncio.sleep(0.01)
        if self.fail_on is not None and self.fail_on in texts:
            raise Overloaded("queue full")
        return np.array([[float(len(t))] for t in texts], dtype=np.float32)


def test_concurrent_requests_share_calls_and_get_their_own_rows():
    send = RecordingSend()

    async def main():
        c = Coalescer(send, max_texts=10)
        requests = [[f"t{i}" * (i + 1)] * (1 + i % 3) for i in range(12)]
        results = await asyncio.gather(*(c.submit(r) for r in requests))
        for r, out in zip(requests, results):
            np.testing.assert_array_equal(out, [[float(len(t))] for t in r])
        return c

    c = asyncio.run(main())
    assert c.requests == 12 and c.calls == len(send.calls) < 12
    assert all(len(call) <= 10 for call in send.calls)


def test_lone_request_goes_at_once():
    send = RecordingSend()

    async def main():
        c = Coalescer(send)
        await c.submit(["only"])
        await c.submit(["again"])

    asyncio.run(main())
    assert send.calls == [["only"], ["again"]]


def test_a_failure_reaches_only_its_own_caller():
    send = RecordingSend(fail_on="bad")

    async def main():
        c = Coalescer(send)
        return await asyncio.gather(
            c.submit(["good 1"]), c.submit(["bad"]), c.submit(["good 2"]), return_exceptions=True
        )

    good1, bad, good2 = asyncio.run(main())
    assert isinstance(bad, Overloaded)
    np.testing.assert_array_equal(good1, [[6.0]])
    np.testing.assert_array_equal(good2, [[6.0]])


def test_merged_deadline_is_the_latest():
    seen = []

    async def send(texts, deadline):
        seen.append(deadline)
        return np.zeros((len(texts), 1), np.float32)

    async def main():
        c = Coalescer(send)
        await asyncio.gather(c.submit(["a"], 100.0), c.submit(["b"], 200.0))
        await asyncio.gather(c.submit(["a"], 100.0), c.submit(["b"], None))

    asyncio.run(main())
    assert seen == [200.0, None]


@pytest.mark.parametrize("n", [1, 5])
def test_cancelled_caller_does_not_break_the_others(n):
    send = RecordingSend()

    async def main():
        c = Coalescer(send)
        doomed = asyncio.ensure_future(c.submit(["x"]))
        others = [asyncio.ensure_future(c.submit([f"y{i}"])) for i in range(n)]
        await asyncio.sleep(0)
        doomed.cancel()
        return await asyncio.gather(*others)

    assert len(asyncio.run(main())) == n
