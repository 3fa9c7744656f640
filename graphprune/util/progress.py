"""Progress bars for long steps (calibration, compensation), on stderr.

tqdm when it is installed (transformers brings it), a plain counter otherwise; drawn when
stderr is a terminal (a bar redrawn in a log file is noise), ``GRAPHPRUNE_PROGRESS=1`` draws
them anywhere, ``GRAPHPRUNE_PROGRESS=0`` never. Step lines (:func:`progress_line`) are
printed unless silenced.
"""
from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    setting = os.environ.get("GRAPHPRUNE_PROGRESS", "")
    if setting == "0" or (setting != "1" and not sys.stderr.isatty()):
        yield from items
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        yield from tqdm(items, desc=desc, total=total, leave=False, file=sys.stderr, dynamic_ncols=True)
        return
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    try:
        for k, item in enumerate(items, 1):
            print(f"\r{desc}: {k}/{total or '?'}", end="", file=sys.stderr, flush=True)
            yield item
    finally:  # also when the caller breaks out: the counter's line still ends
        print(file=sys.stderr)


def progress_line(text: str) -> None:
    """One line of progress for steps that are not a loop over items (a search)."""
    if os.environ.get("GRAPHPRUNE_PROGRESS", "1") != "0":
        print(text, file=sys.stderr, flush=True)
