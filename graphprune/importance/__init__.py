"""Importance scorers: one score per index of each group (higher = keep)."""
from __future__ import annotations

from typing import Callable

from .magnitude import magnitude_scores, random_scores

SCORERS: dict[str, Callable] = {
    "l1": lambda dg, tensors, groups: magnitude_scores(dg, tensors, groups, p=1),
    "l2": lambda dg, tensors, groups: magnitude_scores(dg, tensors, groups, p=2),
    "random": lambda dg, tensors, groups: random_scores(groups),
}
