"""heap.settle: long-lived objects leave the collector's full passes; dead cycles still go."""

import gc
import weakref

from bertrec.server import heap


class Node:
    def __init__(self):
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_settle_freezes_what_is_alive_and_frees_cycles_frozen_earlier():
    try:
        node = Node()
        alive = weakref.ref(node)
        heap.settle()
        assert gc.get_freeze_count() > 0
        del node
        gc.collect()
        assert alive() is not None  # frozen: full passes no longer see it
        heap.settle()  # e.g. after a model swap
        assert alive() is None  # unfrozen, found dead, collected
    finally:
        gc.unfreeze()
