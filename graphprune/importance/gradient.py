"""Loss-based criteria from gradients accumulated over the calibration batches.

- ``taylor`` (first order, Molchanov et al. 2019; LLM-Pruner's group form): the loss
  change of removing index k is about -sum(w * dL/dw) over every weight it owns, so
  the score is |sum w*g| summed over batches and members.
- ``hessian`` (Optimal Brain Damage with the Fisher diagonal, as Torch-Pruning's
  HessianImportance): 1/2 sum w^2 * E[g^2], accumulated as sum (w*g)^2.
"""
from __future__ import annotations

import numpy as np

from ..graph import Group
from .base import ScoreContext, register_importance, scatter


def _grad_scores(ctx: ScoreContext, groups: list[Group], which: int, absolute: bool) -> dict[int, np.ndarray]:
    out = {}
    for g in groups:
        score = np.zeros(g.size, dtype=np.float64)
        for m in g.members:
            acc = ctx.grads.get(m.name)
            if acc is None:
                continue  # buffers and constants get no gradient
            a = acc[which]
            other = tuple(d for d in range(a.ndim) if d != m.dim)
            scatter(score, ctx.dg.solver_coords(m.term, g.id), a.sum(axis=other) if other else a)
        out[g.id] = np.abs(score) if absolute else 0.5 * score
    return out


@register_importance("taylor", needs="grad")
def taylor(ctx: ScoreContext, groups: list[Group]) -> dict[int, np.ndarray]:
    """First-order Taylor: |sum of w * dL/dw| over every weight the index owns."""
    return _grad_scores(ctx, groups, 0, True)


@register_importance("hessian", needs="grad")
def hessian(ctx: ScoreContext, groups: list[Group]) -> dict[int, np.ndarray]:
    """Optimal Brain Damage with the Fisher diagonal: 1/2 sum w^2 E[g^2]."""
    return _grad_scores(ctx, groups, 1, False)
