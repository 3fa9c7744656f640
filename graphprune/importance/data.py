"""Calibration-data criteria, read at the sites that consume a group's channels.

A channel matters by what it contributes where it is consumed: the columns of the
next linear map or convolution, weighted by what flows through them.

- ``activation`` (Wanda, Sun et al. 2023, structured): sum_i |W_ij| * ||X_j||.
- ``fluctuation`` (FLAP, An et al. 2024): Var(X_j) * ||W_:j||^2, the part of a
  channel's contribution that a bias cannot absorb.
- ``obs`` (Optimal Brain Surgeon on the layer's reconstruction, as in ZipLM /
  SlimGPT): the increase in a site's output error when index k is removed *and the
  remaining columns are refit*, tr(W_B (Hinv_BB)^-1 W_B^T) with H the input Gram
  (bias column included, so a channel's mean costs nothing), relative to the
  site's output energy. This is what compensation then achieves, so it is the
  criterion of choice when compensation is on.

A group without any consumer site (the channel ends in an activation-activation
product, say) falls back to l2 magnitude, and the report says so.
"""
from __future__ import annotations

import numpy as np
import torch

from ..graph import Group
from ..util.linalg import solve_np
from .base import ScoreContext, register_importance, scatter, with_fallback
from .magnitude import l2
from .obs_order import greedy_columns

DAMP = 0.01  # ridge, relative to the mean diagonal of the input Gram (SparseGPT's default)
# The ridge OBS *ranks* with (the refit cross-validates its own): SmolLM2-135M calibrated on news scored
# better on news and on two other kinds of text at 20% and 50% with 1e-3 than with 1e-2 (1e-4: the same
# within 0.4%, 1e-1 and 1: worse; docs/llm_pruning.md), and EfficientNet-Lite0 and all-MiniLM-L6-v2 kept
# what they had (held-out KL 0.253 -> 0.245; mean embedding cosine within 0.004). Read at call time, so a
# benchmark can vary it (tools/bench_llm_crossdomain.py --obs-damp).
OBS_DAMP = 1e-3


def oriented(ctx: ScoreContext, site) -> np.ndarray:
    """The site's weight as (out, in channels of one group, kernel positions)."""
    v = ctx.dg.ir.values[site.w]
    w = ctx.weight(v.source or v.name)
    w = np.moveaxis(w, (site.w_out, site.w_in), (0, 1))
    return w.reshape(w.shape[0], w.shape[1], -1)


def column_weight(ctx: ScoreContext, site, p: int) -> np.ndarray:
    """Per input channel of the site: sum of |W|^p over outputs and kernel positions."""
    w = np.abs(oriented(ctx, site)) ** p
    g = site.groups
    if g == 1:
        return w.sum(axis=(0, 2))
    o, c = w.shape[0] // g, w.shape[1]  # grouped: output block q reads input channels q*c..(q+1)*c
    return w.reshape(g, o, c, -1).sum(axis=(1, 3)).reshape(-1)


def _coords(ctx: ScoreContext, site, gid: int) -> list[np.ndarray]:
    v = ctx.dg.ir.values[site.x]
    return ctx.dg.solver_coords(ctx.dg.solver.layout((site.x, site.x_dim % v.rank)), gid)


def _per_site(ctx: ScoreContext, groups: list[Group], site_score, fallback, why: str, by: str) -> dict[int, np.ndarray]:
    """Sum ``site_score(site, stats, group)`` over every site the calibration saw for each group."""

    def score_one(g: Group) -> np.ndarray | None:
        parts = [site_score(site, ctx.stats[site.node], g) for site in ctx.sites_of.get(g.id, [])
                 if site.node in ctx.stats and ctx.stats[site.node].channels.n]
        parts = [p for p in parts if p is not None]
        return np.sum(parts, axis=0) if parts else None

    return with_fallback(ctx, groups, score_one, fallback, why, by)


def _columns(ctx: ScoreContext, column_score):
    """A site score from a per-input-channel score: each channel votes for its group index."""

    def site_score(site, st, g: Group) -> np.ndarray:
        score = np.zeros(g.size, dtype=np.float64)
        scatter(score, _coords(ctx, site, g.id), column_score(site, st))
        return score

    return site_score


@register_importance("activation", needs="calib")
def activation(ctx: ScoreContext, groups: list[Group]) -> dict[int, np.ndarray]:
    """Wanda, structured: sum over outputs of |W_ij| times the input channel's norm ||X_j||."""
    return _per_site(ctx, groups, _columns(ctx, lambda site, st: column_weight(ctx, site, 1) * st.channels.norm.numpy()),
                     l2, "activation: no linear/conv input the calibration saw", "l2")


@register_importance("fluctuation", needs="calib")
def fluctuation(ctx: ScoreContext, groups: list[Group]) -> dict[int, np.ndarray]:
    """FLAP: the input channel's variance times the squared norm of its weight column."""
    return _per_site(ctx, groups, _columns(ctx, lambda site, st: column_weight(ctx, site, 2) * st.channels.var.numpy()),
                     l2, "fluctuation: no linear/conv input the calibration saw", "l2")


def damped_inverse(h: torch.Tensor, damp: float = DAMP) -> torch.Tensor:
    """(H + lambda I)^-1 with lambda relative to H's mean diagonal; the trailing bias row is not damped."""
    h = h.clone()
    d = h.shape[0] - 1
    lam = damp * float(h.diagonal()[:d].mean()) if d else 0.0
    h.diagonal()[:d] += lam if lam > 0 else 1e-8
    chol, info = torch.linalg.cholesky_ex(h)
    if int(info) == 0:
        return torch.cholesky_inverse(chol)
    return torch.linalg.pinv(h, hermitian=True)  # not positive definite: a constant feature, say


def damped_inverse_rows(x: torch.Tensor, damp: float = DAMP) -> torch.Tensor:
    """damped_inverse(X^T X) from the samples X (N, features + 1, the last column the constant 1) where
    N < features: the undamped bias row is eliminated by centring (its Schur complement), and the
    rest is Woodbury, (Xc^T Xc + lambda I)^-1 = (I - Xc^T (Xc Xc^T + lambda I)^-1 Xc) / lambda:
    an N x N factorisation and two products instead of a cubic inverse."""
    xr = x[:, :-1]
    d, n = xr.shape[1], xr.shape[0]
    lam = damp * float((xr ** 2).sum()) / d if d else 0.0
    lam = lam if lam > 0 else 1e-8
    mu = xr.mean(0, keepdim=True)
    xc = xr - mu
    k = xc @ xc.T
    k.diagonal().add_(lam)
    y = torch.linalg.solve_triangular(torch.linalg.cholesky(k), xc, upper=False)  # L^-1 Xc
    out = torch.empty(d + 1, d + 1, dtype=x.dtype)
    s_inv = out[:d, :d]
    torch.mm(y.T, y, out=s_inv)
    s_inv.mul_(-1 / lam).diagonal().add_(1 / lam)  # S^-1, S = Xc^T Xc + lambda I the Schur complement
    s_mu = s_inv @ mu.T
    out[:d, d:] = -s_mu
    out[d:, :d] = -s_mu.T
    out[d, d] = 1 / n + float(mu @ s_mu)
    return out


GREEDY_MAX = 64  # groups this small (heads) are ordered greedily, with the others refit after each removal
# Wider groups of single columns (FFN units, 1x1 channels) in about this many chunks (obs_order.py); 0:
# each scored alone against the full layer. On SmolLM2 better at 20% on three kinds of text, at 50% the
# FFN-only cut 4.12x -> 3.78x worst case, and it is what lets a measured kinds choice see that (planning/
# kinds.py); on EfficientNet-Lite0 the same (docs/llm_pruning.md, runs of 2026-12-04). Read at call time.
GREEDY_STEPS = 128
# Its cost is cubic in the width: 2 s for 1536 units, 9 s for 3072 (one thread), minutes for 8960; wider
# layers are scored each unit alone, so a 3B model's prune stays within its time.
GREEDY_WIDTH = 4096


def _block_cost(w: np.ndarray, hinv: np.ndarray, blk: np.ndarray) -> float:
    wb = w[:, blk]
    return float(np.einsum("ob,bo->", wb, solve_np(hinv[np.ix_(blk, blk)], wb.T)))


def _greedy(w: np.ndarray, hinv: np.ndarray, blocks: list[np.ndarray]) -> np.ndarray:
    """Remove indices one at a time, cheapest first, refitting the rest after each (the OBS
    update of W and of H^-1), as ZipLM does for heads: correlated heads are not both kept for
    being individually costly. Score: the accumulated error when the index goes, so the
    lowest scores are the first removed whatever the ratio. A removed index's columns of W and
    rows of H^-1 are zero after its update, so they are dropped: the updates shrink as it goes."""
    alive = np.ones(hinv.shape[0], dtype=bool)
    left = [k for k, b in enumerate(blocks) if len(b)]
    score = np.zeros(len(blocks))
    total = 0.0
    while left:
        pos = np.cumsum(alive) - 1  # each original feature's column now
        costs = [_block_cost(w, hinv, pos[blocks[k]]) for k in left]
        j = int(np.argmin(costs))
        k = left.pop(j)
        total += max(costs[j], 0.0)
        score[k] = total
        if not left:
            break  # nothing left to score: the last update would serve nothing
        blk = pos[blocks[k]]
        alive[blocks[k]] = False
        rest = pos[alive]
        solve = solve_np(hinv[np.ix_(blk, blk)], hinv[np.ix_(blk, rest)])  # (H^-1_BB)^-1 H^-1_B:
        w = w[:, rest] - w[:, blk] @ solve
        hinv = hinv[np.ix_(rest, rest)] - hinv[np.ix_(rest, blk)] @ solve
    return score


def obs_costs(w: torch.Tensor, b: torch.Tensor | None, gram: torch.Tensor | None, feature_index: np.ndarray,
              size: int, x: torch.Tensor | None = None) -> np.ndarray:
    """Per group index: the relative output error of removing it with the rest refit.

    ``w`` is (out, features), ``gram`` the augmented input Gram, ``feature_index`` the group
    index of every feature (-1: not in the group). ``x``: the samples instead of the Gram
    (the row-space route, calib/sites.py rows_route: fewer samples than features).
    """
    wa = torch.cat([w, (b if b is not None else torch.zeros(w.shape[0], dtype=w.dtype))[:, None]], 1)
    if x is not None:
        hinv = damped_inverse_rows(x, OBS_DAMP)
        energy = float(((x.float() @ wa.float().T).double() ** 2).sum())  # a normaliser: float32 serves
        diag = (x ** 2).sum(0)
    else:
        hinv = damped_inverse(gram, OBS_DAMP)
        energy = float(torch.einsum("of,fg,og->", wa, gram, wa))
        diag = gram.diagonal()
    cost = np.zeros(size)
    blocks = [np.flatnonzero(feature_index == k) for k in range(size)]
    sizes = {len(b_) for b_ in blocks}
    if size <= GREEDY_MAX:
        cost = _greedy(wa.numpy(), hinv.numpy(), blocks)  # the bias column is refit too
    elif sizes == {1} and GREEDY_STEPS and size <= GREEDY_WIDTH:
        cost = greedy_columns(wa, hinv, np.append(feature_index, -1), size, GREEDY_STEPS)
    elif sizes == {1}:
        idx = torch.as_tensor(np.concatenate(blocks))
        cost = ((w[:, idx] ** 2).sum(0) / hinv.diagonal()[idx].clamp(min=1e-300)).numpy()
    else:  # blocks (conv filters' windows)
        hn, wn = hinv.numpy(), w.numpy()
        for k, blk in enumerate(blocks):
            if len(blk):
                cost[k] = _block_cost(wn, hn, blk)
    silent = diag[:-1].numpy() == 0  # never nonzero on the data: removing it changes nothing,
    for k, blk in enumerate(blocks):           # whatever the damping's ridge term would charge
        if len(blk) and silent[blk].all():
            cost[k] = 0.0
    return cost / max(energy, 1e-300)


@register_importance("obs", needs="calib")
def obs(ctx: ScoreContext, groups: list[Group]) -> dict[int, np.ndarray]:
    """Optimal Brain Surgeon on each consumer's reconstruction: the error left after a refit."""

    def site_score(site, st, g: Group) -> np.ndarray | None:
        if st.gram is None:
            return None
        xs = st.rows
        x = torch.cat(xs).double() if xs is not None else None
        w = torch.as_tensor(oriented(ctx, site), dtype=torch.float64)
        kk = w.shape[2]
        w = w.reshape(w.shape[0], -1)
        b = None
        if site.b is not None:
            bv = ctx.dg.ir.values[site.b]
            b = torch.as_tensor(ctx.weight(bv.source or bv.name), dtype=torch.float64).reshape(-1)
        gram = st.gram.m.double() if x is None else None  # float32 above calib.stats.FP64_MAX features
        return sum(obs_costs(w, b, gram, np.repeat(c, kk), g.size, x) for c in _coords(ctx, site, g.id))

    wide = [g for g in groups if ctx.obs_max_features is not None and any(
        ctx.dg.ir.values[site.w].shape[site.w_in] * site.window > ctx.obs_max_features
        for site in ctx.sites_of.get(g.id, []))]
    out = _per_site(ctx, [g for g in groups if g not in wide], site_score, activation,
                    "obs: no linear/conv input with a Gram", "activation")
    if wide:
        ctx.notes.append(f"obs: {len(wide)} group(s) feeding layers of more than {ctx.obs_max_features} input "
                         "features ranked by activation (OBS there inverts a Gram at cubic cost; "
                         "importance='obs' insists)")
        out.update(activation(ctx, wide))
        for g in wide:  # after the call: where activation fell back to l2 in turn, that is what ranked it
            ctx.fell_back.setdefault(g.id, "activation")
    return out
