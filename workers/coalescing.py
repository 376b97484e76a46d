"""Coalescer: small encode calls that arrive together leave the front end as one replica call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np

Send = Callable[[list[str], "float | None"], Awaitable[np.ndarray]]


class Coalescer:
    """Merges the small requests submitted in one event-loop turn into groups of at most
    `max_texts` texts, each sent with a single call of `send`.

    Under load, responses come back in bursts and their callers' next requests arrive in bursts
    too: one remote call per burst instead of one per request. A lone request still leaves in the
    same turn it arrived. Each caller gets its own slice of the result; when a merged call fails,
    its members are retried one by one so an error reaches only the caller it belongs to.
    """

    def __init__(self, send: Send, max_texts: int = 64):
        self._send = send
        self.max_texts = max_texts
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
        pending, self._pending = self._pending, []
        group: list = []
        size = 0
        for member in pending:
            if group and size + len(member[0]) > self.max_texts:
                asyncio.ensure_future(self._send_group(group))
                group, size = [], 0
            group.append(member)
            size += len(member[0])
        if group:
            asyncio.ensure_future(self._send_group(group))

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
