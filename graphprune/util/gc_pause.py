"""Python's cyclic garbage collector paused while graphprune builds its graphs.

A prune makes hundreds of thousands of small objects (fx nodes, IR values, solver terms);
each time enough are made, a collection walks every live object, the model's modules and
tensors included, so collections cost more the deeper the model and time grew faster than
depth (BERT hidden 512: 24 -> 48 layers 2.15x with collections, 1.7x without). Nothing
made here needs collecting before the call returns; collection resumes then.

Except what a prune makes and drops by the megabyte: copies of the model (candidate plans timed,
proofs tried) and forwards recorded on the real weights hold cycles, so only a collection frees
them; a first prune of a neural operator with 2.4M parameters peaked at 5.7 GiB (2.4 GiB with this; tools/bench_fno.py).
:func:`reclaim` collects where the process has grown by :data:`GROWTH` since the last collection.
"""
from __future__ import annotations

import functools
import gc
from typing import Callable, TypeVar

from .proc import status_bytes

F = TypeVar("F", bound=Callable)

GROWTH = 512 << 20  # bytes of resident memory the process may gain, paused, before a collection
_since: int | None = None  # resident bytes after the last collection (or at the pause)


def paused_gc(fn: F) -> F:
    """Run ``fn`` with the collector off (nested calls leave it to the outermost)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        global _since
        if not gc.isenabled():
            return fn(*args, **kwargs)
        gc.disable()
        _since = status_bytes("VmRSS")
        try:
            return fn(*args, **kwargs)
        finally:
            gc.enable()
            _since = None  # a pause a user makes is theirs: reclaim() acts only inside ours

    return wrapper  # type: ignore[return-value]


def reclaim() -> None:
    """Where the collector is paused and the process has grown by :data:`GROWTH` since the last collection,
    collect (called where a prune drops a copy of the model or a forward's values). Freed memory stays with
    the allocator, so the next collection waits until that is used up and the process grows again."""
    global _since
    if gc.isenabled() or _since is None:
        return
    now = status_bytes("VmRSS")
    if now is not None and now - _since > GROWTH:
        gc.collect()
        _since = status_bytes("VmRSS")
