"""Progress bars for long steps (calibration, compensation), on stderr.

tqdm when it is installed (transformers brings it), a plain counter otherwise;
``GRAPHPRUNE_PROGRESS=0`` silences both.
"""
from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    if os.environ.get("GRAPHPRUNE_PROGRESS", "1") == "0":
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
    for k, item in enumerate(items, 1):
        print(f"\r{desc}: {k}/{total or '?'}", end="", file=sys.stderr, flush=True)
        yield item
    print(file=sys.stderr)


def progress_line(text: str) -> None:
    """One line of progress for steps that are not a loop over items (a search)."""
    if os.environ.get("GRAPHPRUNE_PROGRESS", "1") != "0":
        print(text, file=sys.stderr, flush=True)
