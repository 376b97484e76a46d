"""The front end's worker threads: everything blocking it hands off its event loop.

FAISS searches, store reads and index builds run in these threads (`asyncio.to_thread`, the
loop's default executor). The event loop thread also carries gRPC itself: accepting calls,
reading requests, sending responses and statuses. On a busy front end both want the same
cores, and a call's gRPC steps wait behind searches for other calls. Running the workers a
few nice levels below the loop lets the loop take a core first, so calls are accepted and
answered promptly while the searches absorb the wait (Recommend at concurrency 8 on 2 cores:
gRPC overhead share 24% -> 18%, 594 -> 680 requests/s; BENCHMARKS.md). Raising a thread's nice
value needs no privilege. Threads a worker starts (FAISS's OpenMP team) inherit its priority;
numpy's BLAS pool, started at import, keeps the loop's.

Ray runs its worker processes (encoder replicas, index shards) at nice 15, so the workers here
stay above them (config.MAX_WORKER_NICE): an encode running beside searches must not outrank them.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

logger = logging.getLogger(__name__)

MAX_NICE = 19  # Linux's lowest priority
_refused = False  # setpriority refused once: said once, not per thread


def lower_current_thread(by: int) -> int:
    """Lower the calling thread's CPU priority by `by` nice levels (capped at the lowest) and
    return its nice value after. Linux only: elsewhere setpriority(PRIO_PROCESS) would take a
    thread id for a process id, so priorities are left alone there."""
    global _refused
    if not sys.platform.startswith("linux"):
        return 0
    thread = threading.get_native_id()  # on Linux, PRIO_PROCESS with a thread id sets that thread only
    if by > 0:
        try:
            os.setpriority(os.PRIO_PROCESS, thread, min(os.getpriority(os.PRIO_PROCESS, thread) + by, MAX_NICE))
        except OSError as exc:  # a sandbox refusing setpriority: run at the loop's priority
            if not _refused:
                _refused = True
                logger.warning("worker threads left at the event loop's priority: %s", exc)
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
