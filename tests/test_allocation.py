"""Non-uniform allocation: per-group ratios from measured sensitivity, at the uniform budget."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import calib_batches, rel_err

import graphprune as gp
from graphprune.calib.compensate import compensate
from graphprune.errors import PlanError
from graphprune.planning.allocate import hull, spend_cheapest
from graphprune.planning.plan import keep_masks, make_plan
from graphprune.planning.targets import select_groups
from graphprune.program.onnx_program import OnnxProgram
from graphprune.program.torch_program import TorchProgram


class TwoBranches(torch.nn.Module):
    """Two MLPs side by side; branch ``b``'s output is scaled down 100x, so its hidden units
    matter far less to the output than ``a``'s."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
        self.b = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
        with torch.no_grad():
            self.b[2].weight.mul_(0.01)
            self.b[2].bias.mul_(0.01)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], -1)


def testhull_drops_a_cut_that_a_larger_one_makes_moot():
    # (50, 0.5) lies above the chord from (0, 0) to (80, 0.6) (0.375 at 50): cutting 80 is
    # cheaper per parameter than cutting 50, so the 50 point never starts a segment
    assert hull([(0, 0.0, 0.0), (50, 0.5, 0.5), (80, 0.6, 0.8)]) == [(0, 0.0, 0.0), (80, 0.6, 0.8)]


def test_spend_cheapest_takes_the_cheapest_parameters_first_and_splits_the_last_segment():
    a = SimpleNamespace(id=1, size=10, role="channel")
    b = SimpleNamespace(id=2, size=10, role="channel")
    curves = {1: [(0, 0.0, 0.0), (50, 0.1, 0.5), (80, 1.0, 0.8)],
              2: [(0, 0.0, 0.0), (50, 0.5, 0.5), (80, 0.6, 0.8)]}
    # slopes: a 0.1/50 = 0.002 then 0.9/30 = 0.03; b's hull is one segment 0.6/80 = 0.0075.
    # each group holds 100 parameters, 10 a channel, as the curves' points say (50 at 0.5, 80 at 0.8)
    def count(g, r):
        return round(100 * r)
    # Budget 120: a's first segment (50), then 70 of b's 80 -> the fewest channels removing 70: 7 of 10
    assert spend_cheapest([a, b], curves, 120, 1, count) == {1: 0.5, 2: 0.7}
    # a budget a whole segment meets exactly takes no part of the next
    assert spend_cheapest([a, b], curves, 50, 1, count) == {1: 0.5, 2: 0.0}
    # b's parameters quadratic in its channels (a recurrent layer's hidden x hidden), 125 r^2: 80 at 0.8 as its
    # curve says, but 7 channels remove only 61; the counted search takes 8 (80 >= 70) where interpolation took 7
    assert spend_cheapest([a, b], curves, 120, 1, lambda g, r: round(125 * r * r) if g.id == 2 else round(100 * r)) \
        == {1: 0.5, 2: 0.8}


def test_spend_cheapest_backs_off_a_coarse_unit_where_finer_ones_cost_less():
    """A group of 4 heads (100 parameters each, one hull segment to 3 heads at slope 0.001) crosses a budget of
    250: 3 heads overshoot by 50. Two heads and 50 units of a finer group cost 0.2 + 50 x its slope: taken where
    that is below the 3 heads' 0.3 (PiT's first stage: one head was 13% of the MACs), not otherwise."""
    heads = SimpleNamespace(id=1, size=4, role="outer")
    units = SimpleNamespace(id=2, size=100, role="channel")

    def count(g, r):
        return round(400 * r) if g.id == 1 else round(100 * r)

    for unit_slope, want in ((0.0015, {1: 0.5, 2: 0.5}), (0.003, {1: 0.75, 2: 0.0})):
        curves = {1: [(0, 0.0, 0.0), (300, 0.3, 0.75)], 2: [(0, 0.0, 0.0), (80, 80 * unit_slope, 0.8)]}
        assert spend_cheapest([heads, units], curves, 250, 1, count) == want


def test_sensitivity_prunes_the_branch_that_matters_less():
    model, calib = TwoBranches().eval(), calib_batches(4)
    xs = torch.cat([c[0] for c in calib_batches(seed=9)])  # held out
    out = {}
    for how in ("uniform", "sensitivity"):
        out[how] = gp.prune(copy.deepcopy(model), calib[0], ratio=0.5, importance="activation", calib=calib,
                            compensate=False, allocation=how)
    (uni, uni_rep), (sens, sens_rep) = out["uniform"], out["sensitivity"]
    assert sens_rep.allocation is not None and uni_rep.allocation is None
    assert sens.b[0].out_features < sens.a[0].out_features
    # the same budget: at least the uniform plan's parameters go, and at most one unit more
    # (a hidden unit of a branch is 8 weights + 1 bias in, 4 weights out)
    removed_u = uni_rep.params_before - uni_rep.params_after
    removed_s = sens_rep.params_before - sens_rep.params_after
    assert removed_u <= removed_s <= removed_u + 13
    assert rel_err(model, sens, xs) < rel_err(model, uni, xs)
    assert "allocation: sensitivity" in str(sens_rep)


def test_uniform_option_keeps_equal_groups_equal_under_the_default_allocation():
    """uniform=True overrides the default call's sensitivity allocation (which, above, cuts branch b
    deeper): both branches keep one count, and the report names no allocation."""
    model, calib = TwoBranches().eval(), calib_batches(4)
    pruned, rep = gp.prune(copy.deepcopy(model), calib[0], ratio=0.5, importance="activation", calib=calib,
                           compensate=False, uniform=True)
    assert rep.allocation is None
    assert pruned.a[0].out_features == pruned.b[0].out_features == model.a[0].out_features // 2


def test_a_masked_variant_run_is_the_compensated_pruned_model(tmp_path):
    """What sensitivity measures is the model the plan and its refit would produce, in both
    front-ends: a masked run with the refit weights equals the rewritten model's run."""
    model, calib = TwoBranches().eval(), calib_batches(4)
    path = tmp_path / "two.onnx"
    gp.export_onnx(model, (calib[0][0],), path)
    torch_prog = TorchProgram(model, calib[0])
    onnx_prog = OnnxProgram.load(path)
    for program, batches in ((torch_prog, torch_prog.batches(calib)),
                             (onnx_prog, onnx_prog.batches([{"x": c[0].numpy()} for c in calib]))):
        dg = program.graph()
        groups = select_groups(dg)
        plan = make_plan(groups, {g.id: np.arange(g.size, dtype=float) for g in groups}, 0.0, 1, {groups[0].id: 0.5})
        comp = compensate(program, dg, plan, batches)
        assert comp.sites and comp.updates
        pruned = program.apply(plan, comp.updates)
        got = {(v, k): outs for v, k, outs in program.run_variants(batches[:2], [(keep_masks(dg, plan), comp.updates)])}
        for k in range(2):
            np.testing.assert_allclose(got[(0, k)][0], pruned.run(batches[k])[0], rtol=1e-4, atol=1e-5)


def test_onnx_allocation_keeps_the_oracle(tmp_path):
    model, calib = TwoBranches().eval(), calib_batches(4)
    src, dst = tmp_path / "two.onnx", tmp_path / "slim.onnx"
    gp.export_onnx(model, (calib[0][0],), src)
    report = gp.prune_onnx(src, dst, ratio=0.5, round_to=1, measure_latency=False,
                           calib=[{"x": c[0].numpy()} for c in calib])
    assert report.allocation is not None and report.oracle.passed
    kept = sorted(k for k, _ in report.kept.values())
    assert kept[0] < kept[1]  # one branch (b) lost more than the other


def test_auto_falls_back_to_uniform_when_sensitivity_would_be_slow(monkeypatch):
    monkeypatch.setattr("graphprune.planning.allocate.AUTO_MACS", 0.0)
    model, calib = TwoBranches().eval(), calib_batches(4)
    _, report = gp.prune(copy.deepcopy(model), calib[0], ratio=0.5, calib=calib)
    assert report.allocation is None
    assert any("allocation: uniform" in n and "allocation='sensitivity'" in n for n in report.notes)
    assert {k for k, _ in report.kept.values()} == {16}


def test_allocation_errors():
    model, calib = TwoBranches().eval(), calib_batches(4)
    with pytest.raises(PlanError, match="calib="):
        gp.prune(copy.deepcopy(model), calib[0], ratio=0.5, allocation="sensitivity")
    with pytest.raises(PlanError, match="ratios="):
        gp.prune(copy.deepcopy(model), calib[0], ratio=0.5, calib=calib, allocation="sensitivity", ratios={0: 0.1})
    with pytest.raises(PlanError, match="allocation must be one of"):
        gp.prune(copy.deepcopy(model), calib[0], ratio=0.5, calib=calib, allocation="greedy")


def test_cli_allocation_flag(tmp_path):
    import os
    import subprocess
    import sys

    model, calib = TwoBranches().eval(), calib_batches(4)
    src, feeds = tmp_path / "two.onnx", tmp_path / "calib.npz"
    gp.export_onnx(model, (calib[0][0],), src)
    np.savez(feeds, x=np.concatenate([c[0].numpy() for c in calib]))
    for how in ("sensitivity", "uniform"):
        out = tmp_path / f"{how}.onnx"
        r = subprocess.run([sys.executable, "-m", "graphprune", "prune", str(src), "-o", str(out), "--ratio", "0.5",
                            "--round-to", "1", "--no-latency", "--calib", str(feeds), "--allocation", how],
                           capture_output=True, text=True, env={**os.environ, "GRAPHPRUNE_PROGRESS": "0"})
        assert r.returncode == 0, r.stderr
        assert ("allocation: sensitivity" in r.stdout) == (how == "sensitivity") and out.exists()


def test_allocation_meets_the_budget_when_groups_share_weights():
    """In a conv chain each conv's weight belongs to two groups (its input and output channels):
    parameters removed by both are fewer than the sum of each alone, and the allocation must
    still remove at least what the uniform plan does."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(16, 4)).eval()
    g = torch.Generator().manual_seed(2)
    calib = [(torch.randn(4, 3, 12, 12, generator=g),) for _ in range(3)]
    removed = {}
    for how in ("uniform", "sensitivity"):
        _, report = gp.prune(copy.deepcopy(model), calib[0], ratio=0.5, calib=calib, allocation=how)
        removed[how] = report.params_before - report.params_after
    assert removed["sensitivity"] >= removed["uniform"]


def test_sensitivity_allocation_under_a_macs_budget():
    """allocation='sensitivity' with a budget measures each group's output error at fixed ratios and
    spends the MACs where it is least: the budget holds, and the plan's error on the calibration
    data is no worse than the uniform plan's at the same budget (what the allocation minimises)."""
    import copy

    import numpy as np

    import graphprune as gp
    from graphprune.zoo import build

    model, args = build("mobilenetv2")
    model.eval()
    g = torch.Generator().manual_seed(0)
    calib = [(torch.randn(4, *args[0].shape[1:], generator=g),) for _ in range(3)]

    def error(pruned) -> float:
        with torch.no_grad():
            num = sum(float(((pruned(*b) - model(*b)) ** 2).sum()) for b in calib)
            den = sum(float((model(*b) ** 2).sum()) for b in calib)
        return num / den

    sens, rep = gp.prune(copy.deepcopy(model), args, budget={"macs": 0.7}, calib=calib, allocation="sensitivity",
                         compensate=False, runtime=None)
    uni, urep = gp.prune(copy.deepcopy(model), args, budget={"macs": 0.7}, calib=calib, allocation="uniform",
                         compensate=False, runtime=None)
    assert rep.budget.allocation == "sensitivity"
    assert rep.macs_after <= 0.7 * rep.macs_before + 1
    assert any("sensitivity under the macs budget (masks only)" in n for n in rep.notes)
    assert rep.kept != urep.kept  # the measured curves moved the cuts
    assert error(sens) <= 1.05 * error(uni) + 1e-9, (error(sens), error(uni))
    assert np.isfinite(error(sens))


class _Recurrent(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lstm, self.fc = torch.nn.LSTM(8, 64, 2, batch_first=True), torch.nn.Linear(64, 16)

    def forward(self, x):
        return self.fc(self.lstm(x)[0][:, -1])


def test_the_measured_allocation_removes_what_uniform_removes_where_weights_are_quadratic():
    """A recurrent layer's weights are hidden x hidden: the partial segment, taken as if parameters were
    linear in channels, removed 12% more than the uniform plan it stands in for (a speaker encoder lost 87.5%
    of its weights where 75% was the uniform share). Counted, it removes the uniform plan's parameters."""
    g = torch.Generator().manual_seed(1)
    calib = [(torch.rand(8, 12, 8, generator=g),) for _ in range(4)]
    args = (torch.rand(1, 12, 8),)
    _, uniform = gp.prune(_Recurrent().eval(), args, ratio=0.5, calib=calib, runtime=None, allocation="uniform",
                          heldout_check=False)
    _, auto = gp.prune(_Recurrent().eval(), args, ratio=0.5, calib=calib, runtime=None, allocation="sensitivity",
                       heldout_check=False)
    gone = uniform.params_before - uniform.params_after
    assert auto.allocation.removed == auto.allocation.target == gone
    assert auto.params_before - auto.params_after == gone
