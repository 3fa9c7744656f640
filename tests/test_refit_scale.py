"""What keeps the refit affordable at LLM widths: errors read off the solve instead of another
(out, S) x (S, S) product, wide sites solved in float32, the ridge cross-validated on a sample of
output rows, fixed by ``ridge=`` or carried from block to block in a stream, and OBS's cubic
inverse skipped for the default call's widest consumers."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers import calib_batches

import graphprune as gp
from graphprune.calib import refit as refit_mod
from graphprune.calib import sites as stats_mod
from graphprune.calib.refit import refit
from graphprune.hf import stream

transformers = pytest.importorskip("transformers")


def _data(rows: int, f: int, out: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, f, generator=g, dtype=torch.float64) @ torch.randn(f, f, generator=g, dtype=torch.float64)
    xa = torch.cat([x, torch.ones(rows, 1, dtype=torch.float64)], 1)
    w, b = torch.randn(out, f, generator=g, dtype=torch.float64), torch.randn(out, generator=g, dtype=torch.float64)
    keep = torch.rand(f, generator=g) > 0.3
    return xa, w, b, keep


def _direct_error(xa, w, b, new_w, new_b) -> float:
    """The relative output error measured on the rows themselves, not from Grams."""
    want = xa[:, :-1] @ w.T + b
    got = xa[:, :-1] @ new_w.double().T + (new_b.double() if new_b is not None else b)
    return float(((got - want) ** 2).sum() / (want ** 2).sum())


@pytest.mark.parametrize("f", [40, stats_mod.FP64_MAX + 60])  # float64 below FP64_MAX features, float32 above
def test_refit_errors_are_the_errors_measured_on_the_data(f):
    xa, w, b, keep = _data(3 * f, f, 24)
    h = xa.T @ xa
    r = refit(w, b, h, h, h, keep, True, damp=0.05)
    tol = 1e-9 if f <= stats_mod.FP64_MAX else 1e-4
    assert r.error_after == pytest.approx(_direct_error(xa, w, b, r.w, r.b), rel=tol, abs=1e-12)
    dropped = w.clone()
    dropped[:, ~keep] = 0
    assert r.error_before == pytest.approx(_direct_error(xa, w, b, dropped, b), rel=tol)
    assert r.error_after < r.error_before
    assert (r.w[:, ~keep] == 0).all()


def test_float32_solve_of_a_wide_site_matches_float64():
    f = stats_mod.FP64_MAX + 60
    xa, w, b, keep = _data(3 * f, f, 16, seed=1)
    h = xa.T @ xa
    wide = refit(w, b, h, h, h, keep, True, damp=0.05)
    old, stats_mod.FP64_MAX = stats_mod.FP64_MAX, f  # the same site solved in float64
    try:
        exact = refit(w, b, h, h, h, keep, True, damp=0.05)
    finally:
        stats_mod.FP64_MAX = old
    assert wide.w.dtype == torch.float32 and exact.w.dtype == torch.float64
    np.testing.assert_allclose(wide.w.double().numpy(), exact.w.numpy(), atol=1e-3 * float(exact.w.abs().max()))
    assert wide.error_after == pytest.approx(exact.error_after, rel=1e-3)


def test_cross_validation_on_sampled_rows_picks_what_all_rows_pick(monkeypatch):
    xa, w, b, keep = _data(120, 60, 2000, seed=2)  # more outputs than CV_ROWS
    h = xa.T @ xa
    folds = [(xa[k::2].T @ xa[k::2],) * 3 for k in range(2)]
    sampled = refit(w, b, h, h, h, keep, True, folds=folds)
    monkeypatch.setattr(refit_mod, "CV_ROWS", 10**9)
    every = refit(w, b, h, h, h, keep, True, folds=folds)
    assert sampled.lam == every.lam and sampled.lam in refit_mod.LAMBDAS


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 4)).eval()


def test_ridge_option_fixes_the_refit_by_module_or_everywhere():
    x, calib = torch.randn(4, 8), calib_batches()
    base = dict(ratio=0.25, calib=calib, allocation="uniform", measure_latency=False)
    _, cv = gp.prune(_mlp(), (x,), **base)
    _, fixed = gp.prune(_mlp(), (x,), ridge=7.0, **base)
    _, by_name = gp.prune(_mlp(), (x,), ridge={"2": 7.0}, **base)
    assert {s.lam for s in fixed.compensation.sites} == {7.0}
    lam = {s.weight: s.lam for s in by_name.compensation.sites}
    assert lam["2.weight"] == 7.0
    assert lam["4.weight"] == {s.weight: s.lam for s in cv.compensation.sites}["4.weight"]  # cross-validated
    for bad in (0, -1.0, "big", {"2": 0.0}):
        with pytest.raises(gp.PlanError, match="ridge must be"):
            gp.PruneOptions(ridge=bad)


def test_default_obs_ranks_the_widest_consumers_by_activation(monkeypatch):
    import graphprune.pipeline as pipeline

    x, calib = torch.randn(4, 8), calib_batches()
    base = dict(ratio=0.25, calib=calib, allocation="uniform", measure_latency=False, round_to=1)
    monkeypatch.setattr(pipeline, "OBS_AUTO_MAX", 20)  # the 32-wide hidden layer feeds a 32-input consumer
    _, auto = gp.prune(_mlp(), (x,), **base)
    _, act = gp.prune(_mlp(), (x,), importance="activation", **base)
    _, obs = gp.prune(_mlp(), (x,), importance="obs", **base)
    assert any("ranked by activation" in n for n in auto.notes)
    wide = next(g for g, (_, n) in auto.kept.items() if n == 32)
    narrow = next(g for g, (_, n) in auto.kept.items() if n == 16)
    assert auto.plan.pruned[wide] == act.plan.pruned[wide]
    assert auto.plan.pruned[narrow] == obs.plan.pruned[narrow]
    assert not any("ranked by activation" in n for n in obs.notes)  # importance='obs' insists


def _llama(layers: int = 3) -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    cfg.architectures = ["LlamaForCausalLM"]
    return transformers.LlamaForCausalLM(cfg).eval()


def test_stream_carries_the_first_blocks_ridge_to_the_next(tmp_path, monkeypatch):
    _llama().save_pretrained(tmp_path / "src")
    g = torch.Generator().manual_seed(1)
    calib = [{"input_ids": torch.randint(0, 256, (2, 16), generator=g)} for _ in range(4)]
    monkeypatch.setattr(stream, "RIDGE_CARRY", 0)  # every site counts as wide here
    monkeypatch.setattr(stream, "STREAM_ALLOC_S", 0.0)  # and any measured allocation as too slow to repeat
    picks, pick = [], refit_mod._pick_lambda
    monkeypatch.setattr(refit_mod, "_pick_lambda", lambda *a: picks.append(1) or pick(*a))
    real_prune, seen = stream._prune_block, []

    def counted(*args):
        seen.append(len(picks))
        return real_prune(*args)

    monkeypatch.setattr(stream, "_prune_block", counted)
    report = gp.hf.prune(tmp_path / "src", out=tmp_path / "out", calib=calib, ratio=0.25, measure_latency=False,
                         round_to=1)
    first, *rest = report.layers.values()
    lam = {s.weight: s.lam for s in first.compensation.sites}
    assert lam and all(v in refit_mod.LAMBDAS for v in lam.values())
    assert seen[1] > 0 and seen[1] == seen[-1] == len(picks)  # cross-validated in the first block only
    for r in rest:
        assert {s.weight: s.lam for s in r.compensation.sites} == lam
        assert r.allocation is None
    if first.allocation is not None:
        assert any("uniform after the first block" in n for n in report.notes)
    reloaded = gp.hf.load_pruned(tmp_path / "out")
    assert sum(p.numel() for p in reloaded.parameters()) == report.params_after
    dense = copy.deepcopy(_llama())
    assert report.params_after < sum(p.numel() for p in dense.parameters())
