"""Per-request stage timings, carried in a context variable so any layer can add to them.

The RPC layer opens a `StageTimes` for each call (`begin`); code below it marks its work with
`stage("encode")` without being handed anything. Context variables follow the call into the tasks
and threads it starts (asyncio copies the context), so concurrent requests never mix. A stage
nested in another is subtracted from its parent, so the stages of one call add up to at most its
duration instead of counting the same milliseconds twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar


class StageTimes:
    """Milliseconds per stage name for one call, summed when a stage runs several times."""

    def __init__(self) -> None:
        self._ms: dict[str, float] = {}

    def add(self, name: str, ms: float) -> None:
        self._ms[name] = self._ms.get(name, 0.0) + ms

    def as_dict(self) -> dict[str, float]:
        # Concurrent children (a bidirectional stream's requests) can over-subtract a parent.
        return {name: round(max(ms, 0.0), 3) for name, ms in self._ms.items()}


_times: ContextVar[StageTimes | None] = ContextVar("bertrec_stage_times", default=None)
_parent: ContextVar[str | None] = ContextVar("bertrec_stage_parent", default=None)


def begin() -> StageTimes:
    """Collect the stages of everything the current task runs from now on (one RPC's task)."""
    times = StageTimes()
    _times.set(times)
    _parent.set(None)
    return times


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Time the block as stage `name` of the current call; a no-op when no call collects."""
    times = _times.get()
    if times is None:
        yield
        return
    parent = _parent.get()
    _parent.set(name)
    started = time.perf_counter()
    try:
        yield
    finally:
        ms = (time.perf_counter() - started) * 1000.0
        # set, not reset(token): an async generator may be closed from another context.
        _parent.set(parent)
        times.add(name, ms)
        if parent is not None:
            times.add(parent, -ms)
