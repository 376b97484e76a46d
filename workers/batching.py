"""Dynamic batching: concurrent encode calls share batches, and batches are cut into model calls by tokens."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from bertrec.errors import DeadlineExceeded, Overloaded

logger = logging.getLogger(__name__)


@dataclass
class _Request:
    texts: Sequence[str]
    deadline: float | None
    future: asyncio.Future
    enqueued_at: float = field(default_factory=time.monotonic)
    result: np.ndarray | None = None
    remaining: int = 0


# Buckets of the batch-size and queue-time histograms a replica keeps (exported as Prometheus
# histograms on scrape): powers of two up to the largest batch allowed, and 0.5 ms to 1 s.
BATCH_SIZE_BUCKETS = tuple(float(2**i) for i in range(13))
QUEUE_TIME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass
class Histogram:
    """Cumulative counts per upper bound (Prometheus `le` semantics, +Inf implied by `count`)."""

    bounds: tuple[float, ...]
    buckets: list[int] = field(default_factory=list)
    count: int = 0
    sum: float = 0.0

    def __post_init__(self) -> None:
        self.buckets = self.buckets or [0] * len(self.bounds)

    def observe(self, value: float, times: int = 1) -> None:
        self.count += times
        self.sum += value * times
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.buckets[i] += times

    def to_dict(self) -> dict:
        return {"bounds": list(self.bounds), "buckets": list(self.buckets), "count": self.count, "sum": self.sum}


@dataclass
class BatcherStats:
    batches: int = 0
    texts: int = 0
    queue_time_s: float = 0.0
    expired: int = 0
    batch_sizes: Histogram = field(default_factory=lambda: Histogram(BATCH_SIZE_BUCKETS))
    """Texts per batch."""
    queue_times: Histogram = field(default_factory=lambda: Histogram(QUEUE_TIME_BUCKETS))
    """Per text: seconds from entering the queue to the start of its batch's model calls."""

    @property
    def mean_batch_size(self) -> float:
        return self.texts / self.batches if self.batches else 0.0

    @property
    def mean_queue_s(self) -> float:
        return self.queue_time_s / self.texts if self.texts else 0.0


def plan_model_calls(lengths: Sequence[int], max_batch_tokens: int, call_overhead_tokens: int = 0) -> list[list[int]]:
    """Cut a batch into model calls: lists of indices into `lengths` (token counts, special tokens
    included), in ascending length.

    Every call pads to its longest text, so texts are grouped by length, and every call keeps
    rows x longest <= `max_batch_tokens` (a single text longer than that goes alone). Within that,
    the grouping minimises padded tokens + `call_overhead_tokens` per call, the fixed cost of one
    forward pass expressed in tokens: 64 titles of 8 to 30 tokens cost 1,920 padded tokens as one
    call, about half that as a few calls of similar lengths, which pays on a CPU (a call costs about
    as much as 25 tokens there) and not on a GPU (thousands). Exact over groups of whole runs of
    equal length (dynamic programming over at most max_length runs, so cheap for any batch size);
    a group that the token cap would overflow is spread evenly over the fewest calls that fit it.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    if not order:
        return []
    sorted_lengths = [max(1, lengths[i]) for i in order]
    # Runs of equal length: run r covers sorted positions starts[r] .. starts[r + 1] - 1.
    starts = [0] + [p for p in range(1, len(order)) if sorted_lengths[p] != sorted_lengths[p - 1]]
    starts.append(len(order))
    runs = len(starts) - 1

    def group_cost(first_run: int, last_run: int) -> tuple[float, int]:
        """(cost, calls) of one group spanning runs first_run..last_run, all padded to its longest."""
        width = sorted_lengths[starts[last_run + 1] - 1]
        rows = starts[last_run + 1] - starts[first_run]
        calls = math.ceil(rows / max(1, max_batch_tokens // width))
        return rows * width + calls * call_overhead_tokens, calls

    best = [0.0] + [math.inf] * runs  # best[r]: cheapest cover of the first r runs
    cut = [0] * (runs + 1)
    for end in range(1, runs + 1):
        for first in range(end - 1, -1, -1):
            cost = best[first] + group_cost(first, end - 1)[0]
            if cost < best[end]:
                best[end], cut[end] = cost, first
    plan: list[list[int]] = []
    end = runs
    while end > 0:
        first = cut[end]
        lo, hi = starts[first], starts[end]
        calls = group_cost(first, end - 1)[1]
        size = math.ceil((hi - lo) / calls)
        plan[:0] = [order[p : min(p + size, hi)] for p in range(lo, hi, size)]
        end = first
    return plan


class Batcher:
    """Queue texts from many callers; encode them in batches of at most `max_batch_size`.

    A flush happens when a batch is full, or when `max_wait_s` has passed since the oldest queued
    text; a lone request on an idle batcher is sent at once (waiting only helps when others are
    queued). The model runs in a thread so the event loop keeps accepting work meanwhile, which is
    what makes batches form under load. A full queue raises Overloaded; a failed model call fails
    every request in that batch; a request whose deadline passed is skipped, not encoded.
    """

    def __init__(
        self,
        encode_fn: Callable[[list[str]], np.ndarray],
        max_batch_size: int = 64,
        max_wait_s: float = 0.005,
        max_queue: int = 4096,
    ):
        self._encode_fn = encode_fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._queue: deque[tuple[_Request, int]] = deque()  # (request, index of its text)
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self.stats = BatcherStats()

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def configure(self, max_batch_size: int | None = None, max_wait_s: float | None = None) -> None:
        """Adjust batching at run time."""
        if max_batch_size is not None:
            self.max_batch_size = max(1, int(max_batch_size))
        if max_wait_s is not None:
            self.max_wait_s = max(0.0, float(max_wait_s))

    async def submit(self, texts: Sequence[str], deadline: float | None = None) -> np.ndarray:
        """Encode `texts`; `deadline` is absolute wall-clock time (time.time())."""
        if not texts:
            raise ValueError("nothing to encode")
        if len(self._queue) + len(texts) > self.max_queue:
            raise Overloaded(f"encoder queue is full ({len(self._queue)} queued, limit {self.max_queue}); retry later")
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._wakeup = asyncio.Event()
            self._worker = loop.create_task(self._run())
        request = _Request(texts=texts, deadline=deadline, future=loop.create_future(), remaining=len(texts))
        self._queue.extend((request, i) for i in range(len(texts)))
        assert self._wakeup is not None
        self._wakeup.set()
        return await request.future

    def _take_batch(self) -> list[tuple[_Request, int]]:
        batch: list[tuple[_Request, int]] = []
        now = time.time()
        while self._queue and len(batch) < self.max_batch_size:
            request, index = self._queue.popleft()
            if request.future.done():
                continue  # failed or cancelled earlier
            if request.deadline is not None and now > request.deadline:
                self.stats.expired += 1
                request.future.set_exception(DeadlineExceeded("deadline passed while queued; not encoded"))
                continue
            batch.append((request, index))
        return batch

    def _distinct_requests_queued(self) -> int:
        return len({id(r) for r, _ in self._queue})

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            await asyncio.sleep(0)  # let callers that arrived together enqueue
            oldest = self._queue[0][0].enqueued_at if self._queue else time.monotonic()
            while (
                len(self._queue) < self.max_batch_size
                and self._distinct_requests_queued() > 1
                and time.monotonic() - oldest < self.max_wait_s
            ):
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), self.max_wait_s)
                except TimeoutError:
                    break
            batch = self._take_batch()
            if not batch:
                continue
            started = time.monotonic()
            try:
                vectors = await asyncio.to_thread(self._encode_fn, [r.texts[i] for r, i in batch])
            except Exception as exc:  # one failure fails every waiter of the batch
                logger.exception("encode batch of %d failed", len(batch))
                for request, _ in batch:
                    if not request.future.done():
                        request.future.set_exception(exc)
                continue
            self.stats.batches += 1
            self.stats.texts += len(batch)
            self.stats.batch_sizes.observe(len(batch))
            for row, (request, index) in enumerate(batch):
                self.stats.queue_time_s += started - request.enqueued_at
                self.stats.queue_times.observe(started - request.enqueued_at)
                if request.future.done():
                    continue
                if request.result is None:
                    request.result = np.empty((len(request.texts), vectors.shape[1]), dtype=np.float32)
                request.result[index] = vectors[row]
                request.remaining -= 1
                if request.remaining == 0:
                    request.future.set_result(request.result)
