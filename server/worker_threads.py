"""The front end's worker threads: everything blocking it hands off its event loop.

FAISS searches, store reads and index builds run in these threads (`asyncio.to_thread`, the
loop's default executor). The event loop thread also carries gRPC itself: accepting calls,
reading requests, sending responses and statuses. On a busy front end both want the same
cores, and a call's gRPC steps wait behind searches for other calls. Running the workers a
few nice levels below the loop lets the loop take a core first, so calls are accepted and
answered promptly while the searches absorb the wait; the cores stay just as busy (at
concurrency 8 on 2 cores: gRPC overhead share 22% -> 19%, requests/s unchanged;
BENCHMARKS.md). Raising a thread's nice value needs no privilege. Threads a worker starts
(FAISS's OpenMP team) inherit its priority.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

logger = logging.getLogger(__name__)

MAX_NICE = 19  # Linux's lowest priority


def lower_current_thread(by: int) -> int:
    """Lower the calling thread's CPU priority by `by` nice levels (capped at the lowest) and
    return its nice value after. Linux only: elsewhere setpriority(PRIO_PROCESS) would take a
    thread id for a process id, so priorities are left alone there."""
    if by <= 0 or not sys.platform.startswith("linux"):
        return os.getpriority(os.PRIO_PROCESS, 0)
    thread = threading.get_native_id()  # on Linux, PRIO_PROCESS with a thread id sets that thread only
    nice = min(os.getpriority(os.PRIO_PROCESS, thread) + by, MAX_NICE)
    try:
        os.setpriority(os.PRIO_PROCESS, thread, nice)
    except OSError as exc:  # a sandbox refusing setpriority: run at the loop's priority
        logger.warning("worker thread priority left unchanged: %s", exc)
    return os.getpriority(os.PRIO_PROCESS, thread)


def worker_executor(nice: int) -> ThreadPoolExecutor:
    """The executor for the loop's blocking work, its threads `nice` levels below the loop (0 =
    the same priority). Same size as asyncio's own default executor."""
    return ThreadPoolExecutor(
        max_workers=min(32, (os.cpu_count() or 1) + 4),
        thread_name_prefix="bertrec-worker",
        initializer=lower_current_thread,
        initargs=(nice,),
    )
