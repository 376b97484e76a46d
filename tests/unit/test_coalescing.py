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


def test_requests_wait_for_the_window_and_leave_together():
    """Two calls out (max_in_flight): what arrives meanwhile waits and leaves as one call."""
    send = RecordingSend()

    async def main():
        c = Coalescer(send, max_texts=64, max_in_flight=2)
        first = [asyncio.ensure_future(c.submit([f"a{i}"])) for i in range(2)]
        await asyncio.sleep(0.002)  # the first turn's requests leave at once, as one call
        second = asyncio.ensure_future(c.submit(["b0"]))
        await asyncio.sleep(0.002)  # a second call: the window is now full
        late = [asyncio.ensure_future(c.submit([f"c{i}"])) for i in range(5)]
        await asyncio.sleep(0.002)
        assert c.in_flight == 2 and len(send.calls) == 2  # the five wait in the front end
        results = await asyncio.gather(*first, second, *late)
        return c, results

    c, results = asyncio.run(main())
    assert send.calls == [["a0", "a1"], ["b0"], [f"c{i}" for i in range(5)]]
    assert c.in_flight == 0 and [r.shape for r in results] == [(1, 1)] * 8


def test_window_frees_its_slot_when_a_call_fails():
    send = RecordingSend(fail_on="bad")

    async def main():
        c = Coalescer(send, max_in_flight=1)
        outcomes = await asyncio.gather(c.submit(["bad"]), return_exceptions=True)
        again = await c.submit(["good"])  # the failed call gave its slot back
        return c, outcomes, again

    c, outcomes, again = asyncio.run(main())
    assert isinstance(outcomes[0], Overloaded) and again.shape == (1, 1) and c.in_flight == 0


def test_cancelled_waiting_caller_is_not_sent():
    send = RecordingSend()

    async def main():
        c = Coalescer(send, max_in_flight=1)
        busy = asyncio.ensure_future(c.submit(["busy"]))
        await asyncio.sleep(0.002)
        waiting = asyncio.ensure_future(c.submit(["gave up"]))
        kept = asyncio.ensure_future(c.submit(["kept"]))
        await asyncio.sleep(0.002)
        waiting.cancel()
        await asyncio.gather(busy, kept)

    asyncio.run(main())
    assert send.calls == [["busy"], ["kept"]]
