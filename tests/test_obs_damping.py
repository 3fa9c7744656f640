"""OBS ranks with its own ridge (importance/data.py OBS_DAMP), read when it scores: each single
feature's cost is ||W_:j||^2 / [(H + lambda I)^-1]_jj over the site's output energy, with lambda
OBS_DAMP times H's mean diagonal (the bias row undamped), on both the Gram and the samples route."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import graphprune.importance.data as data
from graphprune.importance.data import obs_costs


def _site(seed: int, n: int = 200, f: int = 80, out: int = 24):
    g = torch.Generator().manual_seed(seed)
    # nearly collinear features: the ridge decides how much of a feature its neighbours can stand in for
    x = torch.randn(n, 8, generator=g, dtype=torch.float64) @ torch.randn(8, f, generator=g, dtype=torch.float64)
    x = torch.cat([x + 1e-2 * torch.randn(n, f, generator=g, dtype=torch.float64), torch.ones(n, 1, dtype=x.dtype)], 1)
    return x, torch.randn(out, f, generator=g, dtype=torch.float64), torch.randn(out, generator=g, dtype=torch.float64)


def _expected(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, damp: float) -> np.ndarray:
    h = (x.T @ x).numpy()
    f = h.shape[0] - 1
    ridge = h.copy()
    ridge[np.arange(f), np.arange(f)] += damp * np.trace(h[:f, :f]) / f
    hinv = np.linalg.inv(ridge)
    wa = np.concatenate([w.numpy(), b.numpy()[:, None]], 1)
    energy = float(np.einsum("of,fg,og->", wa, h, wa))
    return (w.numpy() ** 2).sum(0) / np.diag(hinv)[:f] / energy


@pytest.mark.parametrize("damp", [1e-1, 1e-4])
def test_obs_ranks_with_the_module_ridge_on_both_routes(monkeypatch, damp):
    x, w, b = _site(seed=3)
    monkeypatch.setattr(data, "OBS_DAMP", damp)
    monkeypatch.setattr(data, "GREEDY_STEPS", 0)  # each unit scored alone: the formula _expected derives
    want = _expected(x, w, b, damp)
    f = w.shape[1]
    np.testing.assert_allclose(obs_costs(w, b, x.T @ x, np.arange(f), f), want, rtol=1e-6)
    small = x[:60]  # fewer samples than features: the row-space (Woodbury) route
    np.testing.assert_allclose(obs_costs(w, b, None, np.arange(f), f, small), _expected(small, w, b, damp), rtol=1e-6)


def test_the_ridge_changes_the_ranking_of_collinear_features(monkeypatch):
    x, w, b = _site(seed=5)
    f = w.shape[1]
    orders = []
    for damp in (1.0, 1e-4):
        monkeypatch.setattr(data, "OBS_DAMP", damp)
        orders.append(np.argsort(obs_costs(w, b, x.T @ x, np.arange(f), f)))
    assert not np.array_equal(*orders)  # so the constant is a real choice, measured in docs/llm_pruning.md
