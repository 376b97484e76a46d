"""worker_threads: the front end's blocking work runs below its event loop's CPU priority."""

import os
import sys
import threading

import pytest

from bertrec.server.worker_threads import MAX_NICE, lower_current_thread, worker_executor

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")


def own_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def in_new_thread(fn):
    out = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join()
    return out[0]


def test_workers_run_below_the_calling_thread_and_leave_it_alone():
    base = own_nice()
    if base + 3 > MAX_NICE:
        pytest.skip("this process already runs at the lowest priority")
    with worker_executor(3) as executor:
        assert executor.submit(own_nice).result() == base + 3
    assert own_nice() == base


def test_zero_keeps_the_loops_priority():
    with worker_executor(0) as executor:
        assert executor.submit(own_nice).result() == own_nice()


def test_priority_is_capped_at_the_lowest():
    assert in_new_thread(lambda: lower_current_thread(100)) == MAX_NICE


def test_threads_a_worker_starts_inherit_its_priority():
    """FAISS's OpenMP team is started by the search's worker thread: it must not outrank it."""
    base = own_nice()
    if base + 2 > MAX_NICE:
        pytest.skip("this process already runs at the lowest priority")
    with worker_executor(2) as executor:
        assert executor.submit(in_new_thread, own_nice).result() == base + 2
