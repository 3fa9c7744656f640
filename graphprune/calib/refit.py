"""Retrain-free compensation: refit a consumer from the channels it keeps.

At a site ``y = W x + b`` whose input loses channels, the best new weights for the
kept features S, in the least-squares sense over the calibration data, are

    W'_S = W C[:, S] (H'_SS + lambda I)^-1

where features carry a trailing constant 1 (so the bias is one more column), C is
the cross Gram between the original model's input and the pruned model's input at
the site, and H' the pruned input's Gram. The target is the *original* output, so a
refit also makes up for what was pruned upstream. With ``bias`` alone, only the mean
error is folded into the bias. Front-end neutral: Grams in, weights out.

Two routes solve it, chosen automatically when calibration collects a site's input
(calib/sites.py ``rows_route``): this module's Gram route, F x F statistics and an F x F
solve, and calib/rowspace.py's row-space route, the N samples themselves and an N x N
(kernel) solve, taken where the site is wide (above FP64_MAX features, where Grams are
float32 and hundreds of MB) and calibration has fewer samples than the site has features.
Both give the same weights, errors and cross-validated ridge (tests/test_refit_rowspace.py);
``sites.ROUTE`` forces one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..importance.data import DAMP
from . import sites


@dataclass
class Refit:
    w: torch.Tensor  # (out, features): zero at removed features
    b: torch.Tensor | None  # (out,), when the site has or may get a bias
    error_before: float  # relative output error on the calibration data, pruned as is
    error_after: float  # ... after the refit
    lam: float | None = None  # the ridge strength used (relative to the mean diagonal)


def _error_blocks(energy: float, r: torch.Tensor, h_ss: torch.Tensor, a: torch.Tensor) -> float:
    """The same, from the output energy, R = W~ C_:S and H'_SS."""
    return max(energy - 2 * float((r * a).sum()) + float((a @ h_ss * a).sum()), 0.0)


LAMBDAS = (1e-3, 1e-2, 0.1, 0.3, 1.0, 10.0)  # ridge strengths tried, relative to the mean diagonal


def _solve_blocks(r: torch.Tensor, h_ss: torch.Tensor, a0: torch.Tensor, real: torch.Tensor,
                  lam_rel: float) -> tuple[torch.Tensor, float | None]:
    """argmin_A ||W~ X_d - A X'_S||^2 + lambda ||A - A0||^2 over the real (non-bias) columns, given
    R = W~ C_:S and H'_SS: the ridge pulls toward leaving the layer as it is, not toward zero.
    Returns (A, lambda) where the system was solved exactly (Cholesky), else (A, None)."""
    h = h_ss.clone()
    lam = lam_rel * float(h.diagonal()[real].mean()) if bool(real.any()) else 0.0
    lam = max(lam, 1e-10)
    h.diagonal()[real] += lam
    rhs = r + lam * a0 * real.to(r.dtype)
    chol, info = torch.linalg.cholesky_ex(h)
    if int(info) == 0:
        return torch.cholesky_solve(rhs.T, chol).T, lam
    return torch.linalg.lstsq(h, rhs.T).solution.T, None  # not positive definite (rank-deficient data)


def _solved_error(energy: float, r: torch.Tensor, a: torch.Tensor, a0: torch.Tensor, real: torch.Tensor,
                  lam: float) -> float:
    """_error_blocks for A solved exactly from H'_SS + lambda D: there A H'_SS = R + lambda (A0 - A) D,
    so the error needs no (out, S) x (S, S) product."""
    ah_a = float((r * a).sum()) + lam * float(((a0 - a) * a * real.to(a.dtype)).sum())
    return max(energy - 2 * float((r * a).sum()) + ah_a, 0.0)


CV_ROWS = 512  # output rows the ridge's cross-validation scores (evenly spaced): an estimate of the sum over all


def _pick_lambda(wa, r_all, h_all, s, a0, real, folds) -> float:
    """The ridge strength that predicts each held-out fold best from the other (scored on at most
    CV_ROWS output rows: the error is a sum over rows, and the solves cost in proportion to them)."""
    rows = torch.linspace(0, wa.shape[0] - 1, min(CV_ROWS, wa.shape[0])).round().long().unique()
    wa, r_all, a0 = wa[rows], r_all[rows], a0[rows]
    parts = []
    for fd, fc, fp in folds:
        one = fd is fc and fc is fp
        fd = fd.to(wa.dtype)
        fc, fp = (fd, fd) if one else (fc.to(wa.dtype), fp.to(wa.dtype))
        r_f, h_f = wa @ fc[:, s], fp[s[:, None], s]
        parts.append((float((wa @ fd * wa).sum()), r_f, h_f, r_all - r_f, h_all - h_f))
    return min(LAMBDAS, key=lambda lam: sum(_error_blocks(e, r_f, h_f, _solve_blocks(r_t, h_t, a0, real, lam)[0])
                                            for e, r_f, h_f, r_t, h_t in parts))


def refit(w: torch.Tensor, b: torch.Tensor | None, hd: torch.Tensor, c: torch.Tensor, hp: torch.Tensor,
          keep: torch.Tensor, with_bias: bool, mode: str = "refit", damp: float | None = None,
          folds: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None) -> Refit:
    """New weights for the kept features.

    ``w``: (out, features); ``b``: the current bias or None; Grams are (features+1)^2 float64;
    ``keep``: bool per feature; ``with_bias``: whether the result may have a bias (the site
    has one, or one may be added); ``mode``: "refit" (least squares) or "bias" (mean only).
    The ridge strength is ``damp`` (relative to the mean diagonal) or, given ``folds`` (the
    three Grams per calibration fold), the one of :data:`LAMBDAS` that predicts the
    held-out fold best: a few hundred tokens cannot support the fit a few thousand can.
    """
    # wider sites solve in float32: cubic cost, halved; the ridge bounds the conditioning
    dt = torch.float64 if w.shape[1] <= sites.FP64_MAX else torch.float32
    w = w.to(dt)
    out_n, f = w.shape
    same = c is hd and hp is hd  # refit from the original model's own inputs: one Gram
    hd = hd.to(dt)  # one copy where the three Grams are one (a wide site's Gram is hundreds of MB)
    c, hp = (hd, hd) if same else (c.to(dt), hp.to(dt))
    bias = b.to(dt).reshape(-1) if b is not None else torch.zeros(out_n, dtype=dt)
    wa = torch.cat([w, bias[:, None]], 1)
    wh = wa @ hd
    energy = max(float((wh * wa).sum(dtype=torch.float64)), 1e-300)
    keep_aug = torch.cat([keep.bool(), torch.tensor([with_bias])])
    s = torch.nonzero(keep_aug).flatten()
    a0 = wa[:, s]  # pruned as is: kept columns, bias unchanged
    r = (wh if same else wa @ c)[:, s]  # W~ C_:S, and H'_SS: all the errors below need
    h_ss = hp[s[:, None], s]
    if same:  # A0 H_SS = (W H)_:S - W_:D H_DS, D the dropped columns: a smaller product than A0 H_SS
        drop = torch.nonzero(~keep_aug).flatten()
        a0h = r - wa[:, drop] @ hd[drop][:, s]
        before = max(energy - 2 * float((r * a0).sum()) + float((a0h * a0).sum()), 0.0) / energy
    else:
        before = _error_blocks(energy, r, h_ss, a0) / energy
    real = s < f
    lam = None
    if mode == "bias":
        a = a0.clone()
        if with_bias:
            n = max(float(hp[-1, -1]), 1.0)
            mean_d, mean_p = c[:, -1] / n, hp[:, -1] / n  # the last column of each Gram holds feature sums
            a[:, -1] += wa @ mean_d - a0 @ mean_p[s]
        after = _error_blocks(energy, r, h_ss, a) / energy
    else:
        lam = damp if damp is not None else DAMP
        if damp is None and folds is not None and len(folds) > 1:
            lam = _pick_lambda(wa, r, h_ss, s, a0, real, folds)
        a, lam_abs = _solve_blocks(r, h_ss, a0, real, lam)
        after = (_solved_error(energy, r, a, a0, real, lam_abs) if lam_abs is not None
                 else _error_blocks(energy, r, h_ss, a)) / energy
    if after > before:  # ill-conditioned data: never make a site worse than leaving it alone
        a, after = a0, before
    new_w = torch.zeros_like(w)
    real_s = s[real]
    new_w[:, real_s] = a[:, : len(real_s)]
    new_b = a[:, -1] if with_bias else None
    return Refit(new_w, new_b, before, after, lam)
