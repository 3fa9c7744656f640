"""The latency lookup table (graphprune/planning/latency_table.py) and the budgets it serves:
latency_ms= and speedup=. Real timings are never asserted on (docs/benchmarks.md has them); the
table's arithmetic and the search are checked against a synthetic runtime whose times are known."""
from __future__ import annotations

import math

import pytest
import torch

import graphprune as gp
from graphprune.planning import latency_table as lt
from graphprune.planning.targets import select_groups
from graphprune.program.torch_program import TorchProgram

MS_PER_MAC = 1e-5


def test_bilinear_between_table_points():
    grid = torch.tensor([[1.0, 3.0], [5.0, 7.0]]).numpy()  # rows: inputs 4, 8; columns: outputs 10, 20
    assert lt._bilinear([4, 8], [10, 20], grid, 4, 10) == 1.0
    assert lt._bilinear([4, 8], [10, 20], grid, 8, 20) == 7.0
    assert lt._bilinear([4, 8], [10, 20], grid, 6, 15) == pytest.approx(4.0)  # the mean of the four corners
    assert lt._bilinear([4, 8], [10, 20], grid, 4, 15) == pytest.approx(2.0)


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                               torch.nn.Linear(64, 8)).eval()


ADD_OVERHEAD = 0.01  # ms a run of one Add costs before its elements


def _fake_runtime(monkeypatch, overhead=0.05, ms_per_elem=0.0):
    """A runtime whose time is `overhead` + MS_PER_MAC per multiply-accumulate of every linear, where
    an Add costs ADD_OVERHEAD + `ms_per_elem` per element."""
    def op_time(runtime, op, cin, cout, where=None):
        return MS_PER_MAC * math.prod(op.x_shape[:-1]) * cin * cout

    monkeypatch.setattr(lt, "time_add", lambda runtime, n, where=None: ADD_OVERHEAD + ms_per_elem * n)

    def model_time(self, runtime=None):
        rows = self.args[0].shape[0]
        return overhead + sum(MS_PER_MAC * rows * m.in_features * m.out_features
                              for m in self.model.modules() if isinstance(m, torch.nn.Linear))

    monkeypatch.setattr(lt, "time_op", op_time)
    monkeypatch.setattr(TorchProgram, "latency_ms", model_time)


def test_table_estimates_and_is_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path))
    _fake_runtime(monkeypatch)
    x = torch.randn(4, 32)
    graph = gp.trace(_mlp(), (x,))
    full = 0.05 + MS_PER_MAC * 4 * (32 * 64 + 64 * 64 + 64 * 8)
    model = lt.LatencyModel(graph, "torch", full)
    assert len(model.ops) == 3 and model.table.measured > 0
    assert model.rest == pytest.approx(0.05)

    def size(slot):  # every hidden width (64) halved; the model's input (32) and output (8) stay
        full_size = graph.ir.values[slot[0]].shape[slot[1]]
        return 32 if full_size == 64 else full_size

    want = 0.05 + MS_PER_MAC * 4 * (32 * 32 + 32 * 32 + 32 * 8)
    assert model.estimate(size) == pytest.approx(want, rel=1e-6)
    again = lt.LatencyModel(graph, "torch", full)
    assert again.table.measured == 0  # every op came from the cache


@pytest.mark.parametrize("ms_per_elem", [1e-5, 1e-3])
def test_the_rest_scales_with_the_elements_other_ops_write(monkeypatch, tmp_path, ms_per_elem):
    """Outside the linears the MLP writes two ReLU outputs of 4 x 64: priced at an Add's marginal
    cost per element (its per-run overhead cancels), that part of the rest shrinks with the hidden
    width; the remainder is overhead and stays. When the elements would cost more than the whole
    rest, all of the rest scales."""
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path))
    _fake_runtime(monkeypatch, ms_per_elem=ms_per_elem)
    x = torch.randn(4, 32)
    graph = gp.trace(_mlp(), (x,))
    sites = MS_PER_MAC * 4 * (32 * 64 + 64 * 64 + 64 * 8)
    model = lt.LatencyModel(graph, "torch", 0.05 + sites)

    def size(slot):
        full_size = graph.ir.values[slot[0]].shape[slot[1]]
        return 32 if full_size == 64 else full_size

    relu_elems = 2 * 4 * 64
    scaling = min(0.05, ms_per_elem * relu_elems)  # 0.00512 ms, or all 0.05 when capped
    assert model.rest == pytest.approx(0.05)
    assert model.rest_ms(size) == pytest.approx(0.05 - scaling / 2, rel=1e-6)
    assert model.rest_ms(lambda slot: graph.ir.values[slot[0]].shape[slot[1]]) == pytest.approx(0.05, rel=1e-6)
    halved_sites = MS_PER_MAC * 4 * (32 * 32 + 32 * 32 + 32 * 8)
    assert model.estimate(size) == pytest.approx(0.05 - scaling / 2 + halved_sites, rel=1e-6)
    assert lt.LatencyModel(graph, "torch", 0.05 + sites).table.measured == 0  # the Adds came from the cache


def test_only_the_selected_groups_dims_scale(monkeypatch, tmp_path):
    """A batch of 64 rows through 64 hidden units: the rows are no channel group's, so halving every
    slot of size 64 narrows the ReLU outputs' units only, never their rows."""
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path))
    _fake_runtime(monkeypatch, ms_per_elem=1e-7)
    graph = gp.trace(_mlp(), (torch.randn(64, 32),))
    groups = [g for g in select_groups(graph) if g.size == 64]
    sites = MS_PER_MAC * 64 * (32 * 64 + 64 * 64 + 64 * 8)
    model = lt.LatencyModel(graph, "torch", 0.05 + sites, groups=groups)
    relu_elems = 2 * 64 * 64

    def size(slot):
        full_size = graph.ir.values[slot[0]].shape[slot[1]]
        return 32 if full_size == 64 else full_size

    assert model.rest_ms(size) == pytest.approx(0.05 - 1e-7 * relu_elems / 2, rel=1e-6)


def test_speedup_budget_meets_the_measured_target(monkeypatch, tmp_path):
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path))
    _fake_runtime(monkeypatch)
    model, report = gp.prune(_mlp(), (torch.randn(4, 32),), budget={"speedup": 2.0}, runtime="torch")
    target, before, after = report.budget.latency
    assert target == pytest.approx(before / 2) and after <= target
    assert after >= 0.8 * target  # the least pruning that meets it, not any pruning
    assert any("latency budget on torch: table of 3 layer(s)" in n for n in report.notes)
    with pytest.raises(gp.PlanError, match="speedup"):
        gp.prune(_mlp(), (torch.randn(4, 32),), budget={"speedup": 0.5}, runtime="torch")
    with pytest.raises(gp.PlanError, match="measured on a runtime"):
        gp.prune(_mlp(), (torch.randn(4, 32),), budget={"speedup": 2.0}, runtime=None)


def test_ops_timed_alone_slower_than_the_whole_model_still_give_a_budget(monkeypatch, tmp_path):
    """Measured under load, the ops timed one by one can add up to more than the whole model's
    time: the table's remainder is then 0 (it was negative, and the budget a negative latency)."""
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path))
    _fake_runtime(monkeypatch)
    real = TorchProgram.latency_ms
    monkeypatch.setattr(TorchProgram, "latency_ms", lambda self, runtime=None: 0.5 * real(self, runtime))
    x = torch.randn(4, 32)
    table = lt.LatencyModel(gp.trace(_mlp(), (x,)), "torch", 0.01)
    assert table.rest == 0.0 and table.estimate(lambda slot: 1) >= 0.0
    _, report = gp.prune(_mlp(), (x,), budget={"speedup": 1.5}, runtime="torch")
    target, before, after = report.budget.latency
    assert after <= target < before


def _cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(64, 128, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(128, 64, 3, padding=1)).eval()


def test_latency_budget_on_a_real_runtime_reports_what_it_measured(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path))
    x = torch.randn(1, 3, 32, 32)
    _, report = gp.prune(_cnn(), (x,), budget={"speedup": 1.3}, runtime="onnxruntime")
    target, before, after = report.budget.latency
    assert before > 0 and after > 0 and target == pytest.approx(before / 1.3)
    assert report.macs_after < report.macs_before
    assert any("planned -> measured" in n for n in report.notes)
    with pytest.raises(gp.PlanError, match="speedup=10000 cannot be met on onnxruntime"):
        gp.prune(_cnn(), (x,), budget={"speedup": 10000}, runtime="onnxruntime")


def test_global_allocation_under_a_latency_budget_cuts_where_time_is(monkeypatch, tmp_path):
    """Two hidden layers of equal importance, one of them (the 64-wide input to a 512-wide layer)
    costing far more time per channel: global allocation under a speedup budget prunes it first."""
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path))
    _fake_runtime(monkeypatch)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 512), torch.nn.ReLU(),
                                torch.nn.Linear(512, 8)).eval()
    with torch.no_grad():  # equal magnitudes: l2 importance is flat, so only time tells them apart
        for m in model:
            if isinstance(m, torch.nn.Linear):
                m.weight.fill_(0.1)
    _, report = gp.prune(model, (torch.randn(4, 32),), budget={"speedup": 1.5}, allocation="global",
                         runtime="torch", importance="l2")
    kept = {size: k for k, size in report.kept.values()}
    # per channel: the 64 group saves 32+512 MACs a row, the 512 group 64+8: cut the 64s first
    assert kept[64] < 64 and kept[64] / 64 < kept[512] / 512
