"""How far apart two lists of model outputs are, NaN and inf counted as values: the oracle's measure, and
the check that a trace computes what its model does."""
from __future__ import annotations

import numpy as np


def gaps(got: list[np.ndarray], want: list[np.ndarray]) -> tuple[float, float]:
    """(max |got - want|, the same relative to max(1, max |want|)) over matching outputs.

    NaN and inf are values: equal entries (NaN and NaN, inf and inf) differ by nothing, a NaN or
    inf in one output and not the other by inf. Outputs that differ in number or shape differ by
    inf. (Python's ``max(0.0, nan)`` is 0.0: a plain maximum would pass a model that emits NaN.)"""
    if len(got) != len(want):
        return float("inf"), float("inf")
    worst = scaled = 0.0
    for a, b in zip(got, want):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.shape != b.shape or not np.array_equal(np.isnan(a), np.isnan(b)):
            return float("inf"), float("inf")
        if not a.size:
            continue
        with np.errstate(invalid="ignore"):  # inf - inf
            diff = np.where((a == b) | np.isnan(b), 0.0, np.abs(a - b))
        finite = np.abs(b[np.isfinite(b)])
        gap = float(diff.max())
        worst = max(worst, gap)
        scaled = max(scaled, gap / max(1.0, float(finite.max()) if finite.size else 1.0))
    return worst, scaled
