"""allocation="auto" under a MACs / parameter budget with calibration data and a refit: held-out
sensitivity when its scoring runs are affordable (planning/budget_sensitivity.auto_rows), uniform
with a note saying why and what to pass when they are not."""
from __future__ import annotations

import copy

import torch
from torch import nn

import graphprune as gp
import graphprune.planning.budget_sensitivity as bs
from graphprune.planning.budget_sensitivity import scoring_seconds
from graphprune.program.torch_program import TorchProgram


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(32, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 10)).eval()


def _calib(items: int = 48):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 3, 12, 12, generator=g),) for _ in range(items // 8)]


def _held():
    return [((b[0],), {}) for b in _calib()]


KW = dict(runtime=None, round_to=1, verify=False)


def _prune(macs: float = 0.8, **kw):
    calib = _calib()
    return gp.prune(copy.deepcopy(_cnn()), (calib[0][0][:1],), calib=calib, budget={"macs": macs}, **KW, **kw)


def _widths(model) -> list[int]:
    return [m.out_channels for m in model if isinstance(m, nn.Conv2d)]


def test_auto_measures_held_out_sensitivity_when_affordable():
    pruned, report = _prune()
    sens = [n for n in report.notes if n.startswith("allocation: sensitivity under the macs budget")]
    assert sens and "refit on one fold, scored on the other" in sens[0]
    forced, _ = _prune(allocation="sensitivity")
    assert _widths(pruned) == _widths(forced)  # the same measurement (all 48 items fit the time)
    uniform, _ = _prune(allocation="uniform")
    assert _widths(pruned) != _widths(uniform)


def test_auto_stays_uniform_when_the_runs_cost_too_much(monkeypatch):
    monkeypatch.setattr(bs, "AUTO_LIMIT_S", 1e-9)
    pruned, report = _prune()
    note = next(n for n in report.notes if n.startswith("allocation: uniform; measuring each group's held-out"))
    assert "allocation='sensitivity'" in note
    uniform, _ = _prune(allocation="uniform")
    assert _widths(pruned) == _widths(uniform)


def test_auto_stays_uniform_under_a_deep_cut():
    # past AUTO_MAX_CUT the time-tilted uniform plan keeps the speed (docs/runtime.md)
    pruned, report = _prune(macs=0.5)
    note = next(n for n in report.notes if n.startswith("allocation: uniform; the budget removes 50%"))
    assert "allocation='sensitivity'" in note
    uniform, _ = _prune(macs=0.5, allocation="uniform")
    assert _widths(pruned) == _widths(uniform)
    forced, report = _prune(macs=0.5, allocation="sensitivity")
    assert any(n.startswith("allocation: sensitivity under the macs budget") for n in report.notes)


def test_auto_measures_a_cut_of_forty_percent():
    """macs=0.6 (a cut of 0.4000000000000001 in floating point) is measured: at 40% the measured plan kept
    three times uniform's agreement on other photos (docs/runtime.md, "Sensitivity measured up to 40%")."""
    _, report = _prune(macs=0.6)
    assert any(n.startswith("allocation: sensitivity under the macs budget") for n in report.notes), report.notes


def test_auto_without_a_refit_stays_uniform():
    pruned, report = _prune(compensate=False)
    assert not any(n.startswith("allocation: sensitivity") for n in report.notes)
    assert any(n.startswith("allocation: uniform; auto measures a budget's held-out sensitivity only where a refit")
               for n in report.notes)
    uniform, _ = _prune(allocation="uniform", compensate=False)
    assert _widths(pruned) == _widths(uniform)


def test_uniform_widths_and_an_empty_cut_measure_nothing():
    # uniform=True promises one width per kind; a budget the model already meets has nothing to spend
    for kw in (dict(uniform=True), dict(macs=1.0)):
        _, report = _prune(**kw)
        assert not any(n.startswith("allocation: sensitivity") for n in report.notes), kw


def test_a_first_batch_over_the_allowance_stays_uniform(monkeypatch):
    # sample() scores at least the first batch whole: one batch of 48 items costs 48 items' runs
    whole = torch.cat([b[0] for b in _calib()])
    calib = [((whole,), {})]  # batches as the pipeline holds them: (args, kwargs)
    program = TorchProgram(_cnn(), (whole[:1],))
    dg = program.graph()
    per_item = scoring_seconds(dg, dg.prunable_groups())
    monkeypatch.setattr(bs, "AUTO_BUDGET_S", per_item * 40)  # buys 40 items, the floor of 32 fits
    monkeypatch.setattr(bs, "AUTO_LIMIT_S", per_item * 40)
    notes: list[str] = []
    assert bs.auto_rows(program, dg, dg.prunable_groups(), calib, notes) is None
    assert "on 48 calibration rows" in notes[0]
    assert bs.auto_rows(program, dg, dg.prunable_groups(), _held(), []) == 40  # batches of 8


def test_rows_follow_the_time_allowance(monkeypatch):
    # what AUTO_BUDGET_S buys at the estimated cost per item, never under AUTO_MIN_ITEMS items
    program = TorchProgram(_cnn(), (_calib()[0][0][:1],))
    dg = program.graph()
    groups = dg.prunable_groups()
    per_item = scoring_seconds(dg, groups)
    monkeypatch.setattr(bs, "AUTO_BUDGET_S", per_item * 40.5)
    assert bs.auto_rows(program, dg, groups, _held(), []) == 40
    # the allowance buys fewer than the floor, the floor is within the limit: measured on the floor
    monkeypatch.setattr(bs, "AUTO_BUDGET_S", per_item * 20.5)
    monkeypatch.setattr(bs, "AUTO_LIMIT_S", per_item * 32.5)
    assert bs.auto_rows(program, dg, groups, _held(), []) == 32
    monkeypatch.setattr(bs, "AUTO_LIMIT_S", per_item * 31.5)
    notes: list[str] = []
    assert bs.auto_rows(program, dg, groups, _held(), notes) is None and "over the" in notes[0]


def test_later_groups_cost_less_to_score():
    # a group's candidates run from its first weight onwards: the dense prefix is shared
    program = TorchProgram(_cnn(), (torch.zeros(1, 3, 12, 12),))
    dg = program.graph()
    first, second, third = sorted(dg.prunable_groups(), key=lambda g: min(
        next(i for i, n in enumerate(dg.ir.nodes) if m.value in n.inputs) for m in g.members))
    costs = [scoring_seconds(dg, [g]) for g in (first, second, third)]
    assert costs[0] > costs[1] > costs[2] > 0
