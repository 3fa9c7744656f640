"""The greedy OBS order of single columns (importance/obs_order.py). Removing a set S of columns with
the rest refit optimally costs tr(W_S (H/H_KK) W_S^T), the Schur complement of the kept columns K in
the damped Gram H. The greedy order removes, at each step, the column that raises that cost least,
and scores it with the cost of everything removed so far. Here that order is computed from scratch
by Schur complements and compared with the OBS downdates, and a duplicated column shows why it is
needed: each copy alone costs nothing, the pair together costs what both carried."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import graphprune.importance.data as data
from graphprune.importance.data import damped_inverse, obs_costs
from graphprune.importance.obs_order import greedy_columns


def _removal_cost(h: np.ndarray, w: np.ndarray, s: list[int]) -> float:
    k = [j for j in range(h.shape[0]) if j not in s]
    schur = h[np.ix_(s, s)] - h[np.ix_(s, k)] @ np.linalg.solve(h[np.ix_(k, k)], h[np.ix_(k, s)])
    return float(np.einsum("os,st,ot->", w[:, s], schur, w[:, s]))


def _damped(gram: torch.Tensor, damp: float) -> np.ndarray:
    h = gram.numpy().copy()
    f = h.shape[0] - 1
    h[np.arange(f), np.arange(f)] += damp * np.trace(h[:f, :f]) / f
    return h


def _site(seed: int, n: int = 300, f: int = 9, out: int = 5, duplicate: bool = False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, f, generator=g, dtype=torch.float64) * torch.linspace(0.5, 1.5, f, dtype=torch.float64)
    if duplicate:  # column 1 is column 0 again, up to a little noise
        x[:, 1] = x[:, 0] + 1e-3 * torch.randn(n, generator=g, dtype=torch.float64)
    x = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], 1)
    w = torch.randn(out, f + 1, generator=g, dtype=torch.float64)
    if duplicate:  # every column carries the same weight, so the scale of its input decides its cost
        w[:, :f] = torch.sign(w[:, :f])
        w[:, 1] = w[:, 0]  # the copies add up (opposite signs would cancel, and the pair would cost nothing)
    return x.T @ x, w


def test_one_column_per_step_is_the_greedy_order_of_schur_complements():
    gram, w = _site(seed=1)
    f = w.shape[1] - 1
    h = _damped(gram, 1e-3)
    removed, want = [], np.zeros(f)
    while len(removed) < f:
        costs = {j: _removal_cost(h, w.numpy(), removed + [j]) for j in range(f) if j not in removed}
        j = min(costs, key=costs.get)
        removed.append(j)
        want[j] = costs[j]
    got = greedy_columns(w, damped_inverse(gram, 1e-3), np.append(np.arange(f), -1), f, steps=f)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_chunks_follow_the_schur_complements_with_a_column_that_is_always_refit():
    gram, w = _site(seed=4)
    f = w.shape[1] - 1
    index = np.array([0, 1, 2, 3, -1, 4, 5, 6, 7])  # column 4 is never removed, only refit
    cols = [j for j in range(f) if index[j] >= 0]
    h, wn = _damped(gram, 1e-3), w.numpy()
    removed, want, total = [], np.zeros(f - 1), 0.0
    while len(removed) < len(cols):  # chunks of three (8 columns in 3 steps), cheapest first
        base = _removal_cost(h, wn, removed)
        inc = {j: _removal_cost(h, wn, removed + [j]) - base for j in cols if j not in removed}
        chunk = sorted(inc, key=inc.get)[:3]
        ranked = total + np.cumsum([inc[j] for j in chunk])
        want[index[chunk]] = ranked
        total = max(total + _removal_cost(h, wn, removed + chunk) - base, ranked[-1])
        removed += chunk
    got = greedy_columns(w, damped_inverse(gram, 1e-3), np.append(index, -1), f - 1, steps=3)
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("steps", [10, 3])  # one column per step; chunks of three
def test_a_duplicated_column_is_removed_once_and_its_copy_then_carries_both(monkeypatch, steps):
    gram, w = _site(seed=2, duplicate=True)
    f = w.shape[1] - 1
    index = np.arange(f)
    monkeypatch.setattr(data, "GREEDY_MAX", 0)  # as for a group wider than heads: FFN units
    monkeypatch.setattr(data, "GREEDY_STEPS", 0)
    alone = obs_costs(w[:, :f], w[:, f], gram, index, f)
    assert set(np.argsort(alone)[:2]) == {0, 1}  # scored alone, each copy looks free: a plan drops both
    monkeypatch.setattr(data, "GREEDY_STEPS", steps)
    greedy = obs_costs(w[:, :f], w[:, f], gram, index, f)
    order = list(np.argsort(greedy))
    first, second = sorted((order.index(0), order.index(1)))
    assert first == 0  # one copy still goes first, for nothing
    assert second >= f // 2  # the other now carries the weight of both and is kept over most columns


def test_a_singular_block_is_solved_by_least_squares():
    """A dead unit (zero weights, a zero row of H^-1 after earlier updates) costs nothing and is taken with the
    next cheapest: their block of H^-1 is singular, and torch.linalg.solve raised from the middle of a whisper
    decoder's prune. Least squares gives the minimum-norm update: the dead unit goes first, and the others are
    ordered by their own costs w^2 / H^-1_jj (derived: with H^-1 diagonal, no update moves another column)."""
    w = torch.tensor([[0.0, 1.0, 3.0, 1.0]], dtype=torch.float64)
    hinv = torch.diag(torch.tensor([0.0, 1.0, 1.0, 0.5], dtype=torch.float64))
    score = greedy_columns(w, hinv, np.arange(4), 4, steps=2)
    assert np.isfinite(score).all()
    assert list(np.argsort(score, kind="stable")) == [0, 1, 3, 2]  # costs 0, 1, 2, 9
