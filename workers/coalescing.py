"""Coalescer: small encode calls that arrive together leave the front end as one replica call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np

Send = Callable[[list[str], "float | None"], Awaitable[np.ndarray]]


class Coalescer:
    """Merges small requests into groups of at most `max_texts` texts, each sent with a single
    call of `send`.

    With `max_in_flight` calls already out, new requests wait here and leave together when a call
    returns: the replicas are busy anyway (each has a call running and one queued), and one remote
    call per batch instead of one per request saves the per-call cost on both sides, which for
    one-title requests was a fifth of all the CPU they took. Below the limit a request leaves in the
    event-loop turn it arrived in (requests of that same turn still merge), so a lone request never
    waits. Each caller gets its own slice of the result; when a merged call fails, its members are
    retried one by one so an error reaches only the caller it belongs to.
    """

    def __init__(self, send: Send, max_texts: int = 64, max_in_flight: int = 0):
        self._send = send
        self.max_texts = max_texts
        self.max_in_flight = max_in_flight  # 0 = no limit
        self.in_flight = 0
        self._pending: list[tuple[list[str], float | None, asyncio.Future]] = []
        self._flush_scheduled = False
        self.calls = 0
        self.requests = 0

    async def submit(self, texts: list[str], deadline: float | None = None) -> np.ndarray:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((texts, deadline, future))
        self.requests += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._pending = [m for m in self._pending if not m[2].done()]  # callers that gave up need nothing
        while self._pending and not (self.max_in_flight and self.in_flight >= self.max_in_flight):
            group, size = [], 0
            while self._pending and (not group or size + len(self._pending[0][0]) <= self.max_texts):
                member = self._pending.pop(0)
                group.append(member)
                size += len(member[0])
            self.in_flight += 1
            asyncio.ensure_future(self._send_window(group))

    async def _send_window(self, group: list) -> None:
        """One call of the window; when it returns, what waited meanwhile leaves."""
        try:
            await self._send_group(group)
        finally:
            self.in_flight -= 1
            if self._pending and not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    async def _send_group(self, group: list) -> None:
        live = [m for m in group if not m[2].done()]  # callers that gave up need nothing
        if not live:
            return
        deadlines = [d for _, d, _ in live]
        deadline = None if any(d is None for d in deadlines) else max(deadlines)
        self.calls += 1
        try:
            vectors = await self._send([t for texts, _, _ in live for t in texts], deadline)
        except Exception as exc:
            if len(live) == 1:
                if not live[0][2].done():
                    live[0][2].set_exception(exc)
                return
            await asyncio.gather(*(self._send_group([m]) for m in live))
            return
        offset = 0
        for texts, _, future in live:
            if not future.done():
                future.set_result(vectors[offset : offset + len(texts)])
            offset += len(texts)
