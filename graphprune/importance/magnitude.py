"""Magnitude importance aggregated over a group's members.

Index k of a group owns some positions in each member dim; its score sums the
members' |w|^p over those positions (all other dims included), then takes the
p-th root, so a conv's output filter, its BN affine entries and the next conv's
input slice all vote together.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ..errors import PlanError
from ..graph import DependencyGraph, Group


def magnitude_scores(dg: DependencyGraph, tensors: Mapping[str, np.ndarray], groups: list[Group],
                     p: int = 2) -> dict[int, np.ndarray]:
    out: dict[int, np.ndarray] = {}
    kinds = {v.source: v.kind for v in dg.ir.params()}
    for g in groups:
        score = np.zeros(g.size, dtype=np.float64)
        for m in g.members:
            if kinds.get(m.name) != "param" or m.name not in tensors:
                continue  # running stats and constants carry no learned magnitude
            w = tensors[m.name]
            if w is None:
                raise PlanError(f"parameter '{m.name}' has no values (meta device?): use importance='random' "
                                "or load weights before ranking by magnitude")
            other = tuple(d for d in range(w.ndim) if d != m.dim)
            per_pos = (np.abs(w) ** p).sum(axis=other) if other else np.abs(w) ** p
            for coords in dg.solver_coords(m.term, g.id):  # every occurrence votes
                sel = coords >= 0
                np.add.at(score, coords[sel], per_pos[sel])
        out[g.id] = score ** (1.0 / p)
    return out


def random_scores(groups: list[Group], seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {g.id: rng.random(g.size) for g in groups}
