"""Kernel cliffs (graphprune/planning/cliffs.py): a 3-D convolution that falls off its runtime's fast
kernel below some width keeps at least that width. Real timings are never asserted on (docs/runtime.md
has them): a synthetic runtime whose 3-D convolutions run SLOW times slower per MAC below CLIFF input
channels stands in for PyTorch's CPU convolution (oneDNN above a size, an unfolded volume below)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from helpers import measured_profile

import graphprune as gp
from graphprune.planning import budget, cliffs, turns
from graphprune.planning import latency_table as lt
from graphprune.planning.budget import solve_budget
from graphprune.planning.op_timing import time_op
from graphprune.planning.targets import select_groups
from graphprune.program.torch_program import TorchProgram

MS_PER_MAC = 1e-4
CLIFF, SLOW = 21, 6.0  # below 21 input channels a 3-D convolution runs 6x slower per MAC
VOLUME = 6 * 6 * 6


def _net():
    """3-D convolutions 1 -> 8 -> 24 -> 8 (3x3x3), then 1x1x1 8 -> 2, on a 6^3 volume: only the third
    layer's 24 inputs can be cut across the cliff (the 8s run below it whole)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv3d(8, 24, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv3d(24, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(8, 2, 1)).eval()


def _conv_ms(cin: int, cout: int, window: int) -> float:
    return MS_PER_MAC * VOLUME * cin * cout * window * (SLOW if cin < CLIFF else 1.0)


def _fake_runtime(monkeypatch):
    monkeypatch.setattr(lt, "time_op", lambda runtime, op, cin, cout, where=None: _conv_ms(
        cin, cout, math.prod(op.w_shape[2:])))
    monkeypatch.setattr(TorchProgram, "latency_ms", lambda self, runtime=None: _model_ms(self.model))
    monkeypatch.setattr(TorchProgram, "runner", lambda self, runtime: lambda: TorchProgram.latency_ms(self, runtime))
    monkeypatch.setattr(turns, "in_rounds", lambda runs, label="", **_: [run() for run in runs])


def _model_ms(model) -> float:
    return sum(_conv_ms(m.in_channels, m.out_channels, math.prod(m.kernel_size))
               for m in model.modules() if isinstance(m, torch.nn.Conv3d))


def _x():
    return torch.randn(1, 1, 6, 6, 6)


def test_the_floor_is_the_narrowest_width_no_slower_than_whole(monkeypatch, tmp_path):
    """The table's points for the 24 inputs are 6, 12, 18, 24; 18 runs slower than 24 (18 * SLOW > 24),
    so the widths between are timed until the cliff's edge: CLIFF. The group of 24 keeps 21."""
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path))
    _fake_runtime(monkeypatch)
    dg = gp.trace(_net(), (_x(),))
    groups = select_groups(dg)
    model = lt.LatencyModel(dg, "torch", _model_ms(_net()), groups=groups)
    floors, lines = cliffs.cliff_floors(model, dg, groups)
    g24 = next(g for g in groups if g.size == 24)
    assert floors == {g24.id: CLIFF}
    full = _conv_ms(24, 8, 27)
    assert lines == [f"4 inputs >= {CLIFF} of 24 ({_conv_ms(18, 8, 27):.3f} ms at 18, {full:.3f} ms whole)"]


def test_a_cliff_seen_once_is_not_a_floor(monkeypatch, tmp_path):
    """A point timed slow once (a busy machine) but not when timed again makes no floor."""
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path))
    seen = set()

    def op_time(runtime, op, cin, cout, where=None):
        first = (cin, cout) not in seen
        seen.add((cin, cout))
        return MS_PER_MAC * VOLUME * cin * cout * math.prod(op.w_shape[2:]) * (10.0 if first and cin == 18 else 1.0)

    monkeypatch.setattr(lt, "time_op", op_time)
    dg = gp.trace(_net(), (_x(),))
    groups = select_groups(dg)
    model = lt.LatencyModel(dg, "torch", 1.0, groups=groups)
    assert max(g[ins.index(18), -1] / g[-1, -1] for ins, _, g in model.points if ins[-1] == 24) > 1.5  # seen slow
    assert cliffs.cliff_floors(model, dg, groups) == ({}, [])


def test_a_budget_is_spent_above_the_floor(monkeypatch, tmp_path):
    """The default call at half the MACs keeps the 24 at 21 or more, meets the budget elsewhere and runs
    faster; the same budget with round_to=1 (widths not tuned: no table, no floor) crosses the cliff."""
    measured_profile(monkeypatch, tmp_path, 1)
    _fake_runtime(monkeypatch)
    pruned, rep = gp.prune(_net(), (_x(),), budget={"macs": 0.5}, runtime="torch")
    assert pruned[4].in_channels >= CLIFF
    assert rep.macs_after <= 0.5 * rep.macs_before
    assert any("keep enough channels that no layer runs slower than whole on torch" in n for n in rep.notes)
    assert _model_ms(pruned) < _model_ms(_net())
    blind, _ = gp.prune(_net(), (_x(),), budget={"macs": 0.5}, runtime="torch", round_to=1)
    assert blind[4].in_channels < CLIFF and _model_ms(blind) > _model_ms(pruned)


def test_a_ratio_stops_at_the_floor(monkeypatch, tmp_path):
    """ratio=0.5 halves every group but the one with a floor, which keeps CLIFF."""
    measured_profile(monkeypatch, tmp_path, 1)
    _fake_runtime(monkeypatch)
    pruned, _ = gp.prune(_net(), (_x(),), ratio=0.5, runtime="torch")
    assert [m.out_channels for m in pruned if isinstance(m, torch.nn.Conv3d)] == [4, CLIFF, 4, 2]


def test_the_solver_rounds_a_floor_up_to_the_group_step(monkeypatch, tmp_path):
    """A floor of 21 at multiples of 4 keeps 24; a count above its floor is left as the solver made it.
    At a third of the MACs the solver, free, cuts the 24 below the cliff; floored, it meets the
    budget with the 8s instead."""
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path))
    dg = gp.trace(_net(), (_x(),))
    groups = select_groups(dg)
    g24 = next(g for g in groups if g.size == 24)
    assert budget._floored(lambda x: {g24.id: 5}, [g24], {g24.id: CLIFF}, 4)(0.5) == {g24.id: 24}
    assert budget._floored(lambda x: {g24.id: 5}, [g24], {g24.id: CLIFF}, 1)(0.5) == {g24.id: CLIFF}
    assert budget._floored(lambda x: {g24.id: 22}, [g24], {g24.id: CLIFF}, 1)(0.5) == {g24.id: 22}
    scores = {g.id: torch.arange(g.size, dtype=torch.float64).numpy() for g in groups}
    free, _ = solve_budget(dg, groups, scores, {"macs": 0.3})
    ratios, spent = solve_budget(dg, groups, scores, {"macs": 0.3}, floors={g24.id: CLIFF})
    assert round(24 * (1 - free[g24.id])) < CLIFF <= round(24 * (1 - ratios[g24.id]))
    assert spent.achieved["macs"] <= 0.3 * spent.original["macs"]


def test_a_2d_model_times_nothing_for_floors(monkeypatch, tmp_path):
    """2-D convolutions take their widths from the width profile: no table is built for floors."""
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path))

    def untimed(*a, **k):
        raise AssertionError("a 2-D model's layers were timed for floors")

    monkeypatch.setattr(lt, "time_op", untimed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 4, 3)).eval()
    dg = gp.trace(net, (torch.randn(1, 3, 8, 8),))
    assert cliffs.find_floors(None, "torch", dg, select_groups(dg), 1, None) == ({}, None)


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
@pytest.mark.parametrize("dims", [1, 3])
def test_1d_and_3d_convolutions_are_timed_alone(runtime, dims):
    """The table's ops run at their own kernel rank on both runtimes (a time, not its size, is checked)."""
    conv = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)[dims - 1](4, 6, 3, padding=1)
    x = torch.randn((1, 4) + (5,) * dims)
    dg = gp.trace(torch.nn.Sequential(conv).eval(), (x,))
    (op,) = lt.site_ops(dg)
    assert op.w_shape == (6, 4) + (3,) * dims
    assert time_op(runtime, op, 2, 3) > 0


def test_a_measured_allocation_stops_at_the_floor(monkeypatch, tmp_path):
    """The calibrated default call re-spends the budget by measured sensitivity: the 24's levels stop
    at the floor, so the measured plan keeps it too."""
    measured_profile(monkeypatch, tmp_path, 1)
    _fake_runtime(monkeypatch)
    calib = [torch.randn(2, 1, 6, 6, 6) for _ in range(4)]
    pruned, rep = gp.prune(_net(), (_x(),), budget={"macs": 0.7}, calib=calib, runtime="torch",
                           allocation="sensitivity")
    assert rep.budget.allocation == "sensitivity"
    assert pruned[4].in_channels >= CLIFF and rep.macs_after <= 0.7 * rep.macs_before


def test_uniform_keeps_one_count_per_kind_with_a_floor(monkeypatch, tmp_path):
    """uniform=True: two 24-wide groups of one kind, only one of them feeding a cliff: both keep the floor
    (a floor on one alone made uniform=True refuse its own plan)."""
    measured_profile(monkeypatch, tmp_path, 1)
    _fake_runtime(monkeypatch)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 24, 1), torch.nn.ReLU(), torch.nn.Conv3d(24, 24, 1), torch.nn.ReLU(),
                              torch.nn.Conv3d(24, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(8, 2, 1)).eval()
    for kw in ({"ratio": 0.5}, {"budget": {"macs": 0.5}}):
        pruned, _ = gp.prune(copy.deepcopy(net), (_x(),), runtime="torch", uniform=True, **kw)
        assert pruned[2].in_channels == pruned[4].in_channels >= CLIFF, kw


def test_a_budget_the_floors_leave_no_room_for_is_met_without_them(monkeypatch, tmp_path):
    measured_profile(monkeypatch, tmp_path, 1)
    _fake_runtime(monkeypatch)
    pruned, rep = gp.prune(_net(), (_x(),), budget={"macs": 0.1}, runtime="torch")
    assert rep.macs_after <= 0.1 * rep.macs_before and pruned[4].in_channels < CLIFF
    assert cliffs.FLOORS_DROPPED in rep.notes


class _Skip(torch.nn.Module):
    """The 16-channel input concatenated with an 8-channel 3-D layer's output into a 24-input layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv3d(16, 8, 3, padding=1)
        self.b, self.c = torch.nn.Conv3d(24, 8, 3, padding=1), torch.nn.Conv3d(8, 2, 1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.cat([x, torch.relu(self.a(x))], 1))))


def test_channels_no_plan_removes_count_towards_the_floor(monkeypatch, tmp_path):
    """The 24 inputs hold the model's 16 (frozen) and the 8 of `a`: a floor of 21 asks `a` for 5, not 7."""
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path))
    _fake_runtime(monkeypatch)
    x = torch.randn(1, 16, 6, 6, 6)
    dg = gp.trace(_Skip().eval(), (x,))
    groups = select_groups(dg)
    model = lt.LatencyModel(dg, "torch", _model_ms(_Skip()), groups=groups)
    floors, _ = cliffs.cliff_floors(model, dg, groups)
    assert sorted(floors.values()) == [CLIFF - 16]  # a's group: 16 + 5 = 21


def test_a_cliff_below_the_quarter_width_is_found(monkeypatch, tmp_path):
    """96 inputs: the table's points (24, 48, 72, 96) all run fast; the narrowest a plan may keep (10)
    does not (here 20 times slower per MAC below CLIFF: 10 x 20 > 96), so the floor is found between
    them: CLIFF."""
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(lt, "time_op", lambda runtime, op, cin, cout, where=None: MS_PER_MAC * VOLUME * cin * cout * (
        math.prod(op.w_shape[2:]) * (20.0 if cin < CLIFF else 1.0)))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 96, 1), torch.nn.ReLU(), torch.nn.Conv3d(96, 8, 3, padding=1),
                              torch.nn.ReLU(), torch.nn.Conv3d(8, 2, 1)).eval()
    dg = gp.trace(net, (_x(),))
    groups = select_groups(dg)
    floors, _ = cliffs.cliff_floors(lt.LatencyModel(dg, "torch", 1.0, groups=groups), dg, groups)
    assert floors == {next(g for g in groups if g.size == 96).id: CLIFF}


def test_a_group_its_floor_keeps_whole_is_not_called_idle(monkeypatch, tmp_path):
    """At multiples of 4 the floor of 21 keeps all 24: the report does not blame the ratio for it."""
    measured_profile(monkeypatch, tmp_path, 4)
    _fake_runtime(monkeypatch)
    pruned, rep = gp.prune(_net(), (_x(),), ratio=0.5, runtime="torch")
    assert pruned[4].in_channels == 24
    assert not any("lose nothing" in n for n in rep.notes), rep.notes
