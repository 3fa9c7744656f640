"""Iterative pruning: a geometric schedule toward a budget, the user's callback between steps,
and (for transformers models) a plan history that load_pruned replays."""
from __future__ import annotations

import warnings

import pytest
import torch

import graphprune as gp


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                               torch.nn.Linear(64, 2)).eval()


def test_schedule_reaches_the_budget_in_steps_and_calls_back():
    model, x = _mlp(), torch.randn(4, 8)
    before = sum(p.numel() for p in model.parameters())
    seen = []

    def fine_tune(m, step, report):  # what a user does between steps: train, here one SGD step
        seen.append((step, report.params_after))
        opt = torch.optim.SGD(m.parameters(), lr=1e-3)
        m(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()

    model, reports = gp.prune_iterative(model, (x,), budget={"params": 0.25}, steps=3, callback=fine_tune,
                                        round_to=1)
    after = sum(p.numel() for p in model.parameters())
    assert [s for s, _ in seen] == [1, 2, 3] and len(reports) == 3
    # geometric schedule: 0.25 ** (k / 3) of the original after step k, met from below within one channel
    # (a hidden unit costs 65-73 parameters here, ~6% of the last target)
    for k, (_, params) in enumerate(seen, 1):
        want = before * 0.25 ** (k / 3)
        assert want - 73 <= params <= want + 1, (k, params, want)
    assert after == seen[-1][1]


def test_ratio_schedule_ends_at_the_final_ratio():
    model, x = _mlp(), torch.randn(4, 8)
    model, reports = gp.prune_iterative(model, (x,), ratio=0.75, steps=2)
    assert model[0].out_features == 16 and model[2].out_features == 16  # 64 * (1 - 0.75)
    with pytest.raises(gp.PlanError, match="either budget"):
        gp.prune_iterative(model, (x,), steps=2)
    with pytest.raises(gp.PlanError, match="steps"):
        gp.prune_iterative(model, (x,), ratio=0.5, steps=0)


def test_transformers_schedule_saves_a_history_that_reloads(tmp_path):
    pytest.importorskip("transformers")
    from graphprune.hf import example_inputs
    from graphprune.zoo.hf import build

    model = build("bert").eval()
    inputs = example_inputs(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, reports = gp.prune_iterative(model, (), inputs, budget={"params": 0.7}, steps=2)
    assert len(reports) == 2 and reports[1].params_after < reports[0].params_after
    gp.save_pruned(model, tmp_path)
    again = gp.load_pruned(tmp_path)
    with torch.no_grad():
        want, got = model(**inputs).last_hidden_state, again(**inputs).last_hidden_state
    assert torch.equal(want, got)
