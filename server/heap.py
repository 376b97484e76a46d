"""Keep the cyclic garbage collector's full passes short on a serving front end.

A full collection walks every tracked object. After start-up a front end holds ~270k of them
(modules, the catalogue's maps, index and store wrappers) that live until it stops: with a
100k-item catalogue such a pass took 200 ms, and one landed inside measured Recommend calls
(a round's p99 was 236 ms against 55 ms in the rounds beside it; BENCHMARKS.md). `gc.freeze()`
moves everything alive now into a generation the collector no longer walks, so later full
passes see only what was made since.
"""

from __future__ import annotations

import gc
import logging
import time

logger = logging.getLogger(__name__)


def settle() -> None:
    """Collect, then freeze what is left. Called once the long-lived state is built (start-up,
    a model swap). Unfreezing first lets cycles that died since the last freeze (a swapped-out
    model's objects) be collected instead of kept for good."""
    began = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    logger.info(
        "heap settled: %d long-lived objects out of the collector's full passes (%.0f ms)",
        gc.get_freeze_count(),
        (time.perf_counter() - began) * 1000,
    )
