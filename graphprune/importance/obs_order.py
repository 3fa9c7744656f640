"""OBS ranking of single columns (FFN units, 1x1 channels) in chunks, refitting the rest after each.

Scored one at a time against the full layer, two units that stand in for each other both look cheap
(each one's loss is covered by the other), and a plan that removes the cheapest removes both. ZipLM
removes them greedily instead: the cheapest goes, the others are refit (the OBS update of W and of
H^-1) and re-scored. One removal per step is cubic in the width over the whole order; taking the
cheapest ``chunk`` per step keeps the same idea at a fraction of the cost (a chunk's members are
ordered by their own cost, the next chunk is scored after their joint removal).
"""
from __future__ import annotations

import numpy as np
import torch

from ..util import linalg


def greedy_columns(w: torch.Tensor, hinv: torch.Tensor, feature_index: np.ndarray, size: int,
                   steps: int) -> np.ndarray:
    """Per group index: the output error (absolute; obs_costs normalises it) accumulated by the time
    it goes, removing columns in about ``steps`` chunks, cheapest first. ``w`` is (out, features) with
    the bias column last, ``hinv`` the damped inverse Gram of the same features, ``feature_index``
    each column's group index, one column per index (-1: never removed, always refit; the bias column
    among them). Lower scores go first, whatever the ratio. Within a chunk the scores add the members'
    own costs; the next chunk starts from the chunk's joint cost or that sum, whichever is larger, so
    the scores never fall."""
    cand = feature_index >= 0
    chunk = max(1, -(-int(cand.sum()) // max(steps, 1)))
    alive = np.ones(hinv.shape[0], dtype=bool)
    score = np.zeros(size)
    total = 0.0
    while True:
        pos = np.flatnonzero(alive)  # the original column of each current one
        live = np.flatnonzero(cand[pos])
        if not live.size:
            return score
        costs = (w[:, live] ** 2).sum(0) / hinv.diagonal()[live].clamp(min=1e-300)
        order = _independent(torch.argsort(costs, stable=True).numpy(), hinv, live, chunk)
        take = live[order]
        ranked = total + np.cumsum(costs.numpy()[order].clip(min=0.0))
        score[feature_index[pos[take]]] = ranked
        if take.size == live.size:
            return score
        tb = torch.as_tensor(take)
        hbb, wb = hinv[tb][:, tb], w[:, tb]
        solve = linalg.solve(hbb, hinv[tb])  # (H^-1_BB)^-1 H^-1_B:
        joint = float((wb * linalg.solve(hbb, wb.T).T).sum())  # tr(W_B (H^-1_BB)^-1 W_B^T)
        total = max(total + max(joint, 0.0), float(ranked[-1]))  # the next chunk scores above this one
        keep = torch.as_tensor(np.setdiff1d(np.arange(pos.size), take, assume_unique=True))
        w = w[:, keep] - w[:, tb] @ solve[:, keep]
        hk = hinv[keep]
        hinv = hk[:, keep] - hk[:, tb] @ solve[:, keep]
        alive[pos[take]] = False


COUPLED = 0.3  # |partial correlation| above which two columns are not removed in the same chunk


def _independent(ranked: np.ndarray, hinv: torch.Tensor, live: np.ndarray, chunk: int) -> np.ndarray:
    """Up to ``chunk`` of the cheapest, skipping any whose partial correlation (from H^-1) with one
    already taken exceeds COUPLED: such a pair's joint cost is not the sum of their own, so the
    second is re-scored after the first has gone."""
    taken: list[int] = []
    for r in ranked[: 4 * chunk]:
        c = live[r]
        if taken:
            t = live[np.asarray(taken)]
            corr = hinv[c, t].abs() / (hinv[c, c] * hinv.diagonal()[t]).sqrt().clamp(min=1e-300)
            if float(corr.max()) > COUPLED:
                continue
        taken.append(int(r))
        if len(taken) == chunk:
            break
    return np.asarray(taken)
