"""The collector paused during a prune, and collections where a prune drops memory by the megabyte
(graphprune/util/gc_pause.py): a first prune of a neural operator peaked at 6.5 GB with every copy it
dropped waiting for the pause to end."""
from __future__ import annotations

import gc
import weakref

import numpy as np

from graphprune.util import gc_pause


class _Cycle:
    def __init__(self, nbytes: int):
        self.me, self.data = self, np.ones(nbytes, dtype=np.uint8)  # resident: written, not just reserved


def test_reclaim_collects_dropped_cycles_once_the_process_grew(monkeypatch):
    monkeypatch.setattr(gc_pause, "GROWTH", 8 << 20)
    seen: dict[str, object] = {}

    @gc_pause.paused_gc
    def prune_like():
        assert not gc.isenabled()
        small = _Cycle(1 << 10)
        seen["small"] = weakref.ref(small)
        del small
        gc_pause.reclaim()  # grown by a kilobyte: no collection, the cycle waits
        seen["small alive"] = seen["small"]() is not None
        big = _Cycle(64 << 20)
        seen["big"] = weakref.ref(big)
        del big
        gc_pause.reclaim()  # grown by 64 MB: collected
        seen["big alive"] = seen["big"]() is not None

    prune_like()
    assert seen["small alive"] and not seen["big alive"]
    assert gc.isenabled()
    gc_pause.reclaim()  # outside a pause: nothing to do, and no error
    gc.disable()  # a pause of the user's own: no collection from an old reading
    try:
        left = _Cycle(16 << 20)
        ref = weakref.ref(left)
        del left
        gc_pause.reclaim()
        assert ref() is not None
    finally:
        gc.enable()
