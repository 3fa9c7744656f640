"""The row-space (kernel, Woodbury) refit of calib/rowspace.py: the same solve as the Gram route of
calib/refit.py from the samples themselves, the same cross-validated ridge, the samples kept only
where they are fewer than the features, and a streamed prune that plans and refits alike on
either route."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_refit_scale import _llama

import graphprune as gp
from graphprune.calib import compensate, sites
from graphprune.calib.refit import LAMBDAS, refit
from graphprune.calib.rowspace import refit_rows
from graphprune.calib.sites import Site
from graphprune.calib.stats import SiteStats
from graphprune.importance.data import damped_inverse, damped_inverse_rows, obs_costs
from graphprune.io.lazy_checkpoint import LazyCheckpoint

transformers = pytest.importorskip("transformers")


def _aug(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)


def _site_data(n: int, f: int, out: int, rank: int, seed: int):
    """Correlated inputs (rank ``rank`` plus noise, nonzero mean), the same inputs after an upstream
    prune (perturbed), weights, bias and a keep mask: fewer samples than features."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, rank, generator=g, dtype=torch.float64) @ torch.randn(rank, f, generator=g, dtype=torch.float64)
    x = x + 0.1 * torch.randn(n, f, generator=g, dtype=torch.float64) + 0.5
    xp = x + 0.3 * torch.randn(n, f, generator=g, dtype=torch.float64)
    w, b = torch.randn(out, f, generator=g, dtype=torch.float64), torch.randn(out, generator=g, dtype=torch.float64)
    return _aug(x), _aug(xp), w, b, torch.rand(f, generator=g) > 0.3


def _grams(xd, xp, same: bool):
    if same:
        h = xd.T @ xd
        return h, h, h
    return xd.T @ xd, xd.T @ xp, xp.T @ xp


FOLDS = [torch.arange(0, 80, 2), torch.arange(1, 80, 2)]


@pytest.mark.parametrize("same", [True, False], ids=["own-inputs", "pruned-upstream"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("how", [("refit", 1e-3), ("refit", 0.01), ("refit", 1.0), ("refit", 10.0), ("bias", None)])
def test_row_space_solve_equals_the_gram_solve(same, with_bias, how):
    xd, xp, w, b, keep = _site_data(80, 120, 40, 30, seed=0)
    xp = xd if same else xp
    mode, damp = how
    b = b if with_bias else None
    want = refit(w, b, *_grams(xd, xp, same), keep, with_bias, mode, damp)
    got = refit_rows(w, b, xd, xp, keep, with_bias, mode, damp)
    scale = float(want.w.abs().max())
    np.testing.assert_allclose(got.w.numpy(), want.w.numpy(), atol=1e-9 * scale)
    assert (got.b is None) == (want.b is None)
    if want.b is not None:
        np.testing.assert_allclose(got.b.numpy(), want.b.numpy(), atol=1e-9 * scale)
    assert got.error_before == pytest.approx(want.error_before, rel=1e-9)
    assert got.error_after == pytest.approx(want.error_after, rel=1e-7, abs=1e-12)
    assert got.lam == want.lam
    assert (got.w[:, ~keep] == 0).all()
    if mode == "refit" and damp <= 1.0:
        assert got.error_after < got.error_before  # a real refit, not the "leave it alone" fallback


@pytest.mark.parametrize("rank", [4, 10, 30, 100])  # the pick moves with the data's effective rank
@pytest.mark.parametrize("same", [True, False], ids=["own-inputs", "pruned-upstream"])
def test_cross_validation_picks_the_same_ridge_on_both_routes(rank, same):
    xd, xp, w, b, keep = _site_data(80, 120, 40, rank, seed=rank)
    xp = xd if same else xp
    folds = [tuple(h for h in _grams(xd[i], xp[i], same)) for i in FOLDS]
    want = refit(w, b, *_grams(xd, xp, same), keep, True, folds=folds)
    got = refit_rows(w, b, xd, xp, keep, True, folds=FOLDS)
    assert want.lam in LAMBDAS and got.lam == want.lam
    np.testing.assert_allclose(got.w.numpy(), want.w.numpy(), atol=1e-8 * float(want.w.abs().max()))


def test_wide_sites_solve_in_float32_on_both_routes_alike():
    f = sites.FP64_MAX + 60
    xd, _, w, b, keep = _site_data(300, f, 16, 50, seed=3)
    h = xd.T @ xd
    want, got = refit(w, b, h, h, h, keep, True, damp=0.05), refit_rows(w, b, xd, xd, keep, True, damp=0.05)
    assert got.w.dtype == want.w.dtype == torch.float32
    np.testing.assert_allclose(got.w.double().numpy(), want.w.double().numpy(), atol=2e-3 * float(want.w.abs().max()))
    assert got.error_after == pytest.approx(want.error_after, rel=1e-2)
    # and nearer the error measured on the data: no float32 Grams' cancellation (energy - 2 r.a + a H a)
    t = xd[:, :-1] @ w.T + b
    direct = float(((xd[:, :-1] @ got.w.double().T + got.b.double() - t) ** 2).sum() / (t ** 2).sum())
    assert got.error_after == pytest.approx(direct, rel=1e-4)


def test_obs_from_the_samples_equals_obs_from_the_gram():
    xd, _, w, b, _ = _site_data(60, 96, 32, 20, seed=4)
    xd[:, 5] = 0  # a silent feature costs nothing on either route
    gram = xd.T @ xd
    np.testing.assert_allclose(damped_inverse_rows(xd).numpy(), damped_inverse(gram).numpy(), rtol=0,
                               atol=1e-10 * float(damped_inverse(gram).abs().max()))
    for index, size in ((np.repeat(np.arange(12), 8), 12), (np.arange(96), 96)):  # greedy heads; single units
        want, got = obs_costs(w, b, gram, index, size), obs_costs(w, b, None, index, size, xd)
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert obs_costs(w, b, None, np.arange(96), 96, xd)[5] == 0


def test_statistics_keep_the_samples_while_they_are_fewer_than_the_features(monkeypatch):
    site = Site("n", "x", "w", None, 1, 0, -1, "linear")
    monkeypatch.setattr(sites, "FP64_MAX", 16)  # a 32-wide site counts as wide
    st = SiteStats(site)
    g = torch.Generator().manual_seed(5)
    batches = [torch.randn(2, 4, 32, generator=g) for _ in range(5)]  # 8 samples a batch
    for k, x in enumerate(batches[:4]):
        st.add(x, True, batch=k)
    xs = st.rows
    assert xs is not None and sum(x.shape[0] for x in xs) == 32 and all(fold.m is None for fold in st.folds)
    full = torch.cat(xs).double()
    np.testing.assert_allclose(st.gram.m.numpy(), (full.T @ full).numpy(), atol=1e-5)  # float32 when wide
    st.add(batches[4], True, batch=4)  # 40 samples against 33 features: the Grams take over
    assert st.rows is None and all(fold.x is None for fold in st.folds)
    every = _aug(torch.cat([x.reshape(-1, 32) for x in batches]).double())
    np.testing.assert_allclose(st.gram.m.numpy(), (every.T @ every).numpy(), rtol=1e-5, atol=1e-4)
    assert st.gram.n == 40


def test_a_streamed_prune_plans_and_refits_alike_on_either_route(tmp_path, monkeypatch):
    _llama(layers=2).save_pretrained(tmp_path / "src")  # tests/test_refit_scale.py's tiny Llama
    g = torch.Generator().manual_seed(1)
    calib = [{"input_ids": torch.randint(0, 256, (2, 12), generator=g)} for _ in range(2)]  # 48 tokens < 64, 128
    runs, calls, solve = {}, [], compensate.refit_rows
    monkeypatch.setattr(compensate, "refit_rows", lambda *a, **k: calls.append(1) or solve(*a, **k))
    for route in ("gram", "rows"):
        monkeypatch.setattr(sites, "ROUTE", route)
        report = gp.hf.prune(tmp_path / "src", out=tmp_path / route, calib=calib, ratio=0.5, measure_latency=False,
                             round_to=1, allocation="uniform")
        ckpt = LazyCheckpoint(tmp_path / route)
        runs[route] = (report, {k: ckpt.get(k).float() for k in ckpt.names()})
        assert len(calls) == (0 if route == "gram" else sum(len(r.compensation.sites) for r in report.layers.values()))
    (rg, wg), (rr, wr) = runs["gram"], runs["rows"]
    for name in rg.layers:
        assert rg.layers[name].plan.pruned == rr.layers[name].plan.pruned
        sg, sr = rg.layers[name].compensation.sites, rr.layers[name].compensation.sites
        assert [s.weight for s in sg] == [s.weight for s in sr] and len(sg) >= 2
        assert [s.lam for s in sg] == [s.lam for s in sr]
        for a, z in zip(sg, sr):
            assert z.error_after == pytest.approx(a.error_after, rel=1e-4, abs=1e-8) and a.error_after < a.error_before
    assert set(wg) == set(wr)
    for k in wg:  # float32 weights, written in the checkpoint's dtype
        torch.testing.assert_close(wr[k], wg[k], atol=1e-4, rtol=1e-3)
