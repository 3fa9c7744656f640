"""The refit of refit.py solved in the samples' row space (kernel ridge, Woodbury).

With N calibration samples against F input features, N < F, the Gram route's (F x F) Cholesky and
(out, F) x (F, F) products cost O(F^3); the same least squares from the samples themselves costs
O(N^2 F + N F out). The push-through identity (Z^T Z + lam I)^-1 Z^T = Z^T (Z Z^T + lam I)^-1 turns
the ridge solve over the kept features into one over the N x N kernel K = Z Z^T, and holding X
(N x F) instead of three F x F Grams is a fraction of the memory.

Same problem as refit.py: targets T = X_d W~^T (the original model's outputs), the kept inputs
Z = X_p[:, S] of the pruned model, the ridge pulling toward A0 (the layer left as it is) on the real
columns, the bias (constant-1 feature) column not ridged. With A = A0 + D and E = T - Z A0^T, an
unridged intercept is ridge on centred data: D_r^T = Z_c^T (K_c + lam I)^-1 E_c, the bias moves by
mean(E) - mean(Z_r) D_r^T, and the residual is lam (K_c + lam I)^-1 E_c. The cross-validation solves
each training fold's kernel (N/2 x N/2) once per lambda, and predicts the held-out fold through the
cross kernel.
"""
from __future__ import annotations

import torch

from ..importance.data import DAMP
from . import sites
from .refit import CV_ROWS, LAMBDAS, Refit


def _kernel(g: torch.Tensor, centred: bool) -> torch.Tensor:
    """Z_c Z_c^T from G = Z Z^T: the rows' mean feature removed (P G P, P the centring)."""
    if not centred:
        return g
    return g - g.mean(0, keepdim=True) - g.mean(1, keepdim=True) + g.mean()


def _lam(g: torch.Tensor, k_real: int, lam_rel: float) -> float:
    """The ridge in absolute terms: relative to the mean diagonal of Z_r^T Z_r (trace of Z_r Z_r^T / k)."""
    lam = lam_rel * float(g.diagonal().sum()) / k_real if k_real else 0.0
    return max(lam, 1e-10)


def _pick_lambda(e: torch.Tensor, g: torch.Tensor, k_real: int, centred: bool, folds: list[torch.Tensor]) -> float:
    """refit._pick_lambda from the samples: each fold predicted from the others, scored on at most
    CV_ROWS output rows; each lambda costs a training fold's N x N Cholesky (an eigendecomposition
    would serve every lambda at once, but LAPACK's takes seconds on a centred kernel's null space)."""
    cols = torch.linspace(0, e.shape[1] - 1, min(CV_ROWS, e.shape[1])).round().long().unique()
    e = e[:, cols]
    n = e.shape[0]
    parts = []
    for f in folds:
        t = torch.ones(n, dtype=torch.bool)
        t[f] = False
        t = torch.nonzero(t).flatten()
        g_tt, g_ft, e_t, e_f = g[t][:, t], g[f][:, t], e[t], e[f]
        if centred:  # (Z_f - 1 mu_t)(Z_t - 1 mu_t)^T, and the targets less the training mean
            g_ft = g_ft - g_ft.mean(1, keepdim=True) - g_tt.mean(0, keepdim=True) + g_tt.mean()
            mean = e_t.mean(0, keepdim=True)
            e_t, e_f = e_t - mean, e_f - mean
        parts.append((_kernel(g_tt, centred), g_ft, e_t, e_f, float(g_tt.diagonal().sum())))

    def error(lam_rel: float) -> float:
        total = 0.0
        for k, g_ft, e_t, e_f, trace in parts:
            lam = max(lam_rel * trace / k_real, 1e-10) if k_real else 1e-10
            k = k.clone()
            k.diagonal().add_(lam)
            total += float(((e_f - g_ft @ torch.cholesky_solve(e_t, torch.linalg.cholesky(k))) ** 2).sum())
        return total

    return min(LAMBDAS, key=error)


def refit_rows(w: torch.Tensor, b: torch.Tensor | None, xd: torch.Tensor, xp: torch.Tensor, keep: torch.Tensor,
               with_bias: bool, mode: str = "refit", damp: float | None = None,
               folds: list[torch.Tensor] | None = None) -> Refit:
    """refit.refit from the samples: ``xd`` / ``xp`` (N, features + 1) are the original and the pruned
    model's inputs at the site with a trailing constant 1 (``xp is xd``: the same), ``folds`` the
    sample indices of each calibration fold (the ridge is cross-validated over them)."""
    dt = torch.float64 if w.shape[1] <= sites.FP64_MAX else torch.float32
    out_n, f = w.shape
    same = xp is xd
    xd = xd.to(dt)
    xp = xd if same else xp.to(dt)
    bias = b.to(dt).reshape(-1) if b is not None else torch.zeros(out_n, dtype=dt)
    wa = torch.cat([w.to(dt), bias[:, None]], 1)
    keep_aug = torch.cat([keep.bool(), torch.tensor([with_bias])])
    s, drop = torch.nonzero(keep_aug).flatten(), torch.nonzero(~keep_aug).flatten()
    real_s = s[s < f]
    a0 = wa[:, s]  # pruned as is: kept columns, bias unchanged
    t = xd @ wa.T  # the original outputs
    energy = max(float((t.double() ** 2).sum()), 1e-300)
    # E = T - Z A0^T: from the original model's own inputs, only the dropped columns' part
    e = (xd[:, drop] @ wa[:, drop].T if same else t - xp[:, s] @ a0.T).double()
    del t
    before = float((e ** 2).sum()) / energy
    a, lam = a0.clone(), None
    if mode == "bias":
        if with_bias:
            a[:, -1] += e.mean(0).to(dt)
            after = float(((e - e.mean(0)) ** 2).sum()) / energy
        else:
            after = before
    else:
        zr = xp[:, real_s]
        g = (zr @ zr.T).double()
        if damp is None and folds is not None and len(folds) > 1:
            lam = _pick_lambda(e, g, len(real_s), with_bias, folds)
        else:
            lam = damp if damp is not None else DAMP
        lam_abs = _lam(g, len(real_s), lam)
        mean = e.mean(0, keepdim=True) if with_bias else torch.zeros(1, out_n, dtype=torch.float64)
        k = _kernel(g, with_bias)
        k.diagonal().add_(lam_abs)
        v = torch.cholesky_solve(e - mean, torch.linalg.cholesky(k))  # (K_c + lam I)^-1 E_c
        after = lam_abs ** 2 * float((v ** 2).sum()) / energy  # the residual is lam V
        mu = zr.mean(0, keepdim=True) if with_bias else None
        vt = v.to(dt)
        d_r = zr.T @ vt  # Z_c^T V = Z_r^T V - mu^T (1^T V); 1^T V is 0 but for rounding
        if mu is not None:
            d_r -= mu.T @ vt.sum(0, keepdim=True)
        a[:, : len(real_s)] += d_r.T
        if with_bias:
            a[:, -1] += (mean - (mu.double() @ d_r.double())).reshape(-1).to(dt)
    if after > before:  # never make a site worse than leaving it alone
        a, after = a0, before
    new_w = torch.zeros(out_n, f, dtype=dt)
    new_w[:, real_s] = a[:, : len(real_s)]
    return Refit(new_w, a[:, -1] if with_bias else None, before, after, lam)

