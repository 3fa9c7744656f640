"""Runtime profiles: the measured alignment, its cache, round_to="auto" and the latency report."""
from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from helpers import measured_profile

import graphprune as gp
from graphprune.errors import PlanError, PruneWarning
from graphprune.planning import measure, turns
from graphprune.planning.budget import BudgetResult
from graphprune.planning.placement import CPU, Placement
from graphprune.planning.widths import fastest_alignment
from graphprune.program.torch_program import TorchProgram


def test_best_alignment_from_timings():
    widths = range(33, 65)
    # time grows with width, no alignment effect: any width (1)
    assert measure.best_alignment({c: 1.0 + c / 64 for c in widths}) == 1
    # odd widths twice as slow as multiples of 8: 8 (multiples of 16 are no faster than of 8)
    assert measure.best_alignment({c: (1.0 if c % 8 == 0 else 2.0) for c in widths}) == 8
    # multiples of 4 fast, multiples of 16 faster still: rounding up to 16 wins on average
    t = {c: (0.5 if c % 16 == 0 else 1.0 if c % 4 == 0 else 2.0) for c in widths}
    assert measure.best_alignment(t) == 16
    # within the tolerance the finer step wins: 4 is 1% slower than 8 on average
    t = {c: (1.0 if c % 8 == 0 else 1.02 if c % 4 == 0 else 3.0) for c in widths}
    assert measure.best_alignment(t) == 4


def test_op_kinds_by_weight_shape():
    assert measure.op_kind((32, 1, 3, 3)) == "depthwise"
    assert measure.op_kind((32, 16, 1, 1)) == "depthwise"  # a pointwise conv: timed in the inverted residual
    assert measure.op_kind((32, 16, 3, 3)) == "conv"
    assert measure.op_kind((32, 16)) == "linear"
    assert measure.op_kind((32,)) is None


def test_pinned_alignment(monkeypatch):
    monkeypatch.setenv("GRAPHPRUNE_ALIGN", "depthwise=16,conv=8")
    p = measure.load_profile("onnxruntime")
    assert p.align == {"depthwise": 16, "conv": 8, "linear": 1}
    assert p.alignment(["linear", "conv"]) == 8
    monkeypatch.setenv("GRAPHPRUNE_ALIGN", "4")
    assert set(measure.load_profile("torch").align.values()) == {4}
    for bad in ("eight", "dense=8", "0"):
        monkeypatch.setenv("GRAPHPRUNE_ALIGN", bad)
        with pytest.raises(PlanError, match="GRAPHPRUNE_ALIGN"):
            measure.load_profile("torch")


def test_profile_is_measured_once_and_cached(monkeypatch, tmp_path):
    monkeypatch.delenv("GRAPHPRUNE_ALIGN", raising=False)
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path))
    calls = []

    def fake(runtime, threads=1, where=CPU):
        calls.append(runtime if where.default else f"{runtime} {where.dtype}")
        times = {k: {c: (1.0 if c % 8 == 0 else 2.0) for c in measure.WIDTHS} for k in measure.KINDS}
        return measure.Profile(runtime, measure.machine_id(runtime, threads, where), threads,
                               {k: measure.best_alignment(t) for k, t in times.items()}, times, 0.1)

    monkeypatch.setattr(measure, "measure_profile", fake)
    first = measure.load_profile("onnxruntime")
    second = measure.load_profile("onnxruntime")
    assert calls == ["onnxruntime"]
    assert first.align == second.align == dict.fromkeys(measure.KINDS, 8)
    saved = list((tmp_path / "profiles").glob("onnxruntime-*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["machine"] == first.machine
    measure.load_profile("torch")  # another runtime is another profile
    assert calls == ["onnxruntime", "torch"]
    bf16 = Placement("cpu", "bfloat16")
    assert "cpu bfloat16" in measure.load_profile("torch", where=bf16).machine  # and another placement
    measure.load_profile("torch", where=bf16)
    measure.load_profile("onnxruntime", where=bf16)  # onnxruntime runs float32 on the CPU: the first profile
    assert calls == ["onnxruntime", "torch", "torch bfloat16"]
    assert len(list((tmp_path / "profiles").glob("*.json"))) == 3


def test_real_block_timings_are_positive():
    for runtime in measure.RUNTIMES:
        for kind in measure.KINDS:
            assert measure._time_block(runtime, kind, 40, 1) > 0


def test_blocks_and_ops_run_in_the_placement_dtype(monkeypatch):
    """A bfloat16 model's profile and latency table time bfloat16 kernels (on this CPU; a GPU model
    on its device), not the float32 ones its widths would otherwise be chosen for."""
    import torch.nn.functional as F

    from graphprune.planning import op_timing
    from graphprune.planning.latency_table import SiteOp

    seen = []
    real_conv, real_linear = F.conv2d, torch.nn.Linear.forward

    def conv(x, w, *a, **k):
        seen.append(("conv", x.dtype, w.dtype))
        return real_conv(x, w, *a, **k)

    def linear(self, x):
        seen.append(("linear", x.dtype, self.weight.dtype))
        return real_linear(self, x)

    monkeypatch.setattr(F, "conv2d", conv)
    monkeypatch.setattr(torch.nn.Linear, "forward", linear)
    bf16 = Placement("cpu", "bfloat16")
    assert measure._time_block("torch", "linear", 40, 1, bf16) > 0
    assert measure._time_block("torch", "depthwise", 40, 1, bf16) > 0
    assert {k for k, *_ in seen} == {"linear", "conv"} and all(x == w == torch.bfloat16 for _, x, w in seen)
    out = []  # each table op's result, run once instead of timed
    monkeypatch.setattr(op_timing, "_torch_best", lambda fn, where: out.append(fn().dtype) or 1.0)
    conv_op = SiteOp("n", "conv", (1, 8, 6, 6), (8, 8, 3, 3), ("x", 1), ("w", 0), (1, 1), (1, 1), (1, 1))
    linear_op = SiteOp("m", "linear", (4, 8), (8, 8), ("x", 1), ("w", 0))
    op_timing.time_op("torch", conv_op, 8, 8, bf16), op_timing.time_op("torch", linear_op, 8, 8, bf16)
    op_timing.time_add("torch", 4096, bf16)
    assert out == [torch.bfloat16] * 3


def test_the_default_placement_keeps_its_cache_keys():
    """CPU float32 (every profile before placements) adds nothing to the key: caches stay valid."""
    for runtime in measure.RUNTIMES:
        assert measure.machine_id(runtime, 1) == measure.machine_id(runtime, 1, CPU)
        assert "float32" not in measure.machine_id(runtime, 1)


def test_a_placement_is_where_most_of_the_weights_are():
    from graphprune.planning.placement import of_module

    mixed = torch.nn.Sequential(torch.nn.Linear(4, 400), torch.nn.LayerNorm(400)).to(torch.bfloat16)
    mixed[1].float()  # a float32 norm inside a bfloat16 model
    assert of_module(mixed) == Placement("cpu", "bfloat16")
    assert of_module(torch.nn.Linear(3, 3, device="meta")) == CPU  # no kernels to time there
    assert of_module(torch.nn.Linear(3, 3).to(torch.float8_e4m3fn)) == CPU  # float8: timed as float32
    assert of_module(torch.nn.ReLU()) == CPU


def test_a_model_is_profiled_where_it_runs(monkeypatch, tmp_path):
    """The default call on a bfloat16 model timed in eager PyTorch measures a bfloat16 profile (its
    own cache entry) and says so; the same model for onnxruntime uses the float32 CPU one."""
    monkeypatch.delenv("GRAPHPRUNE_ALIGN", raising=False)
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path))
    asked = []

    def fake(runtime, threads=1, where=CPU):
        asked.append((runtime, where))
        times = {k: {c: (1.0 if c % 16 == 0 else 2.0) for c in measure.WIDTHS} for k in measure.KINDS}
        return measure.Profile(runtime, measure.machine_id(runtime, threads, where), threads,
                               {k: measure.best_alignment(t) for k, t in times.items()}, times, 0.1)

    monkeypatch.setattr(measure, "measure_profile", fake)
    model, args = _mbv2()
    model = model.to(torch.bfloat16)
    args = tuple(a.to(torch.bfloat16) for a in args)
    assert TorchProgram(model, args).placement("torch") == Placement("cpu", "bfloat16")
    assert TorchProgram(model, args).placement("onnxruntime") == CPU
    _, report = gp.prune(copy.deepcopy(model), args, ratio=0.3, runtime="torch", measure_latency=False)
    assert asked == [("torch", Placement("cpu", "bfloat16"))], asked
    assert any("torch cpu bfloat16 kernels favour" in n for n in report.notes), report.notes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: the GPU placement's label, "
                    "batched blocks and synchronisation run only on one (the project machine has none)")
def test_a_gpu_model_is_profiled_on_its_gpu():
    where = Placement("cuda", "float16")
    assert torch.cuda.get_device_name() in measure.machine_id("torch", 1, where)
    assert measure._time_block("torch", "conv", 40, 1, where) > 0
    model, args = _mbv2()
    assert TorchProgram(model.cuda().half(), tuple(a.cuda().half() for a in args)).placement("torch").gpu


def _mbv2():
    import models

    model, args = models.build("mobilenetv2")
    return model.eval(), args


def test_auto_rounding_keeps_measured_multiples(monkeypatch):
    monkeypatch.setenv("GRAPHPRUNE_ALIGN", "depthwise=8")
    model, args = _mbv2()
    graph = gp.trace(model, args)
    pruned, report = gp.prune(copy.deepcopy(model), args, ratio=0.4, runtime="torch", measure_latency=False)
    assert any("multiples" in n for n in report.notes)
    changed = 0
    for gid, (kept, size) in report.kept.items():
        g = graph.group(gid)
        if g.role == "channel" and kept < size:
            changed += 1
            assert kept % 8 == 0, (gid, kept, size)
    assert changed
    _, odd = gp.prune(copy.deepcopy(model), args, ratio=0.4, round_to=1, runtime="torch", measure_latency=False)
    assert any(k % 8 for k, s in odd.kept.values() if k < s)  # the pin is what made them multiples
    _, none = gp.prune(copy.deepcopy(model), args, ratio=0.4, runtime=None)
    assert none.latency_before_ms is None and none.kept == odd.kept  # no runtime: any width, nothing measured


def test_a_flat_profile_still_times_the_whole_model_at_multiples(monkeypatch, tmp_path):
    """A measured profile that favours no multiple (eager PyTorch's float32 blocks here) still lets
    the whole model decide: the plan is made at multiples of 1, 8 and 16 and timed, and a runtime
    that (pretend) runs multiples of 16 fastest gets them. A pinned 1 keeps any width untimed."""
    monkeypatch.delenv("GRAPHPRUNE_ALIGN", raising=False)
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(measure, "measure_profile", lambda runtime, threads=1, where=CPU: measure.Profile(
        runtime, measure.machine_id(runtime, threads, where), threads, dict.fromkeys(measure.KINDS, 1), {}, 0.1))

    def latency(self, runtime=None):
        widths = [m.out_channels for m in self.model.modules() if isinstance(m, torch.nn.Conv2d)]
        return 1.0 + sum(w % 16 != 0 for w in widths)

    _scripted_runtime(monkeypatch, latency)
    model, args = _mbv2()
    _, report = gp.prune(copy.deepcopy(model), args, budget={"macs": 0.6}, runtime="torch")
    assert any(n.startswith("widths: blocks alone run as fast at any width on torch") for n in report.notes)
    tried = next(n for n in report.notes if n.startswith("widths: tried"))
    assert "(groups without one at 1, 8, 16) on torch, timed run by run:" in tried and "kept x4 (up to 16)" in tried, tried
    assert all(k % 16 == 0 for k, s in report.kept.values() if k < s)
    mlp = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)).eval()
    _, linear = gp.prune(mlp, (torch.randn(2, 16),), budget={"macs": 0.6}, runtime="torch")  # no convolutions:
    assert not any(n.startswith("widths: tried") for n in linear.notes)  # any width, nothing timed, as before
    assert any("any channel count runs at full speed on torch here (measured profile)" in n for n in linear.notes)
    monkeypatch.setenv("GRAPHPRUNE_ALIGN", "1")  # pinned: any width, as the suite runs
    _, pinned = gp.prune(copy.deepcopy(model), args, budget={"macs": 0.6}, runtime="torch")
    assert not any(n.startswith("widths: tried") for n in pinned.notes)
    assert any(k % 16 for k, s in pinned.kept.values() if k < s)


def test_report_shows_latency_and_warns_when_slower(monkeypatch):
    model, args = _mbv2()
    _, report = gp.prune(copy.deepcopy(model), args, ratio=0.3)
    assert report.runtime == "torch" and report.latency_before_ms > 0 and report.latency_after_ms > 0
    assert "latency (PyTorch eager, 1 thread)" in str(report)
    # a runtime that (pretend) runs the pruned model slower: the prune says so, it does not hide it
    times = iter([1.0, 2.0, 2.1, 2.2])  # before, then after measured three times: slower each time
    monkeypatch.setattr(TorchProgram, "latency_ms", lambda self, runtime=None: next(times))
    with pytest.warns(PruneWarning, match="runs slower than the original on torch: 2.000 ms vs 1.000 ms") as got:
        _, slow = gp.prune(copy.deepcopy(model), args, ratio=0.3)
    assert any("slower" in n for n in slow.notes)
    # the advice follows the widths given: at 'auto' (the default) it does not tell the user to use 'auto'
    assert "Try a larger round_to than the measured multiples" in str(got[-1].message)
    times = iter([1.0, 2.0, 2.1, 2.2])
    with pytest.warns(PruneWarning, match="Try round_to='auto'"):
        gp.prune(copy.deepcopy(model), args, ratio=0.3, round_to=1)


def test_bad_runtime_and_round_to():
    model, args = _mbv2()
    with pytest.raises(PlanError, match="runtime 'tensorrt'"):
        gp.prune(copy.deepcopy(model), args, ratio=0.3, runtime="tensorrt")
    with pytest.raises(PlanError, match="round_to must be 'auto'"):
        gp.prune(copy.deepcopy(model), args, ratio=0.3, round_to="fast")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _, report = gp.prune(copy.deepcopy(model), args, ratio=0.3, round_to=8, runtime=None)
    assert report.runtime is None and not any("slower" in str(w.message) for w in seen)


def test_whole_model_timing_picks_the_coarser_multiple(monkeypatch, tmp_path):
    """The profile's step (4 here) is also tried doubled and quadrupled on the whole model, and the
    fastest plan is kept: a runtime that (pretend) runs widths of 16 fastest gets multiples of 16."""
    measured_profile(monkeypatch, tmp_path, {"depthwise": 4})
    model, args = _mbv2()

    def latency(self, runtime=None):
        widths = [m.out_channels for m in self.model.modules() if isinstance(m, torch.nn.Conv2d)]
        return 1.0 + sum(w % 16 != 0 for w in widths)  # each width off a multiple of 16 costs 1 ms

    _scripted_runtime(monkeypatch, latency)
    _, report = gp.prune(copy.deepcopy(model), args, budget={"macs": 0.6}, runtime="torch")
    note = next(n for n in report.notes if "tried the measured multiples" in n)
    assert "(up to 16)" in note.split("kept")[-1], note
    assert all(k % 16 == 0 for k, s in report.kept.values() if k < s)
    assert report.macs_after <= 0.6 * report.macs_before * 1.001  # the budget still holds at the coarser step


def test_a_measured_budget_allocation_is_respent_at_the_coarser_multiple(monkeypatch, tmp_path):
    """allocation='sensitivity' under a budget measures its error curves once; the width timing then
    re-spends the budget from those curves at each multiple, and keeps the fastest that meets it (of those
    within 2% of it: here x1 and x4 land 12.5% and 4.9% under and are not timed)."""
    measured_profile(monkeypatch, tmp_path, {"depthwise": 4})
    model, args = _mbv2()
    g = torch.Generator().manual_seed(0)
    calib = [(torch.randn(4, *args[0].shape[1:], generator=g),) for _ in range(2)]

    def latency(self, runtime=None):
        widths = [m.out_channels for m in self.model.modules() if isinstance(m, torch.nn.Conv2d)]
        return 1.0 + sum(w % 8 != 0 for w in widths)

    _scripted_runtime(monkeypatch, latency)
    _, report = gp.prune(copy.deepcopy(model), args, budget={"macs": 0.6}, runtime="torch", calib=calib,
                         allocation="sensitivity")
    assert report.budget.allocation == "sensitivity"
    assert sum("allocating" in n or "allocation: sensitivity" in n for n in report.notes) == 1  # measured once
    note = next(n for n in report.notes if "tried the measured multiples" in n)
    assert "(up to 8)" in note.split("kept")[-1] and "not timed" in note, note
    assert all(k % 8 == 0 for k, s in report.kept.values() if k < s)
    assert report.macs_after <= 0.6 * report.macs_before * 1.001



def _scripted_runtime(monkeypatch, latency) -> None:
    """Eager PyTorch timed as ``latency(program)`` scripts it: the whole model, and candidate plans
    timed in rounds (each round's figure is the run's return value)."""
    monkeypatch.setattr(TorchProgram, "latency_ms", latency)
    monkeypatch.setattr(TorchProgram, "runner", lambda self, runtime: lambda: latency(self, runtime))
    monkeypatch.setattr(turns, "in_rounds", lambda runs, label="", **_: [run() for run in runs])


class _TimedPlans:
    """A program whose plans (named by strings) time as scripted, one figure per timing, timed
    until ``least`` figures are in and the fastest kept, as Program.plan_latency_ms does."""

    def __init__(self, script):
        self.script, self.best, self.order = {k: list(v) for k, v in script.items()}, {}, []

    def plan_latency_ms(self, plan, runtime, least=1):
        while self.order.count(plan) < least:
            self.order.append(plan)
            ms = self.script[plan].pop(0)
            self.best[plan] = min(ms, self.best.get(plan, ms))
        return self.best[plan]


def test_width_candidates_are_timed_twice_taking_turns():
    """One slow spell of the machine must not decide between close plans: the x1 plan's first
    timing comes out 50% slow, its second is true, and the x1 plan (truly fastest) is kept; the
    candidates take turns."""
    program = _TimedPlans({"up to 4": [1.5, 1.0], "up to 8": [1.2, 1.2], "up to 16": [1.3, 1.3]})
    notes: list[str] = []
    made = fastest_alignment(program, "torch", {0: 4}, lambda s, t: (f"up to {max(s.values())}", None),
                             ("up to 4", None), notes)
    assert made == ("up to 4", None) and notes[-1].endswith("kept x1 (up to 4)"), notes
    assert program.order == ["up to 4", "up to 8", "up to 16"] * 2


def test_the_widths_note_names_the_pin_that_gives_the_same_plan_anywhere(monkeypatch):
    """Timings choose the multiples, so a fresh cache or another machine could give other bytes; the
    note names the GRAPHPRUNE_ALIGN that makes the kept plan without timing, and a pinned profile is
    not scaled by timing at all."""
    program = _TimedPlans({"up to 4": [1.3, 1.3], "up to 8": [1.0, 1.0], "up to 16": [1.2, 1.2]})
    notes: list[str] = []
    made = fastest_alignment(program, "onnxruntime", {0: 4, 1: 2}, lambda s, t: (f"up to {max(s.values())}", None),
                             ("up to 4", None), notes, align={"conv": 4, "depthwise": 2, "linear": 1})
    assert made == ("up to 8", None)
    assert notes[-1].endswith("kept x2 (up to 8); GRAPHPRUNE_ALIGN=conv=8,depthwise=4,linear=1 gives this plan on any "
                              "machine, untimed"), notes[-1]
    monkeypatch.setenv("GRAPHPRUNE_ALIGN", "depthwise=8")
    timed = []
    monkeypatch.setattr(TorchProgram, "plan_latency_ms", lambda *a, **k: timed.append(1) or 1.0)
    model, args = _mbv2()
    _, report = gp.prune(copy.deepcopy(model), args, ratio=0.4, runtime="torch", measure_latency=True)
    assert not timed and not any(n.startswith("widths: tried") for n in report.notes)
    assert any("multiples GRAPHPRUNE_ALIGN pins (depthwise x8; not timed" in n for n in report.notes)


def test_timing_a_plan_again_keeps_the_faster_figure(monkeypatch):
    figures = iter([2.0, 1.0, 3.0])
    monkeypatch.setattr(TorchProgram, "latency_ms", lambda self, runtime=None: next(figures))
    model, args = _mbv2()
    program = TorchProgram(model, args)
    plan = gp.plan(program.graph(), model, ratio=0.25)
    assert program.plan_latency_ms(plan, "torch") == 2.0
    assert program.plan_latency_ms(plan, "torch") == 2.0  # cached: not timed again
    assert program.plan_latency_ms(plan, "torch", least=2) == 1.0
    assert program.plan_latency_ms(plan, "torch", least=2) == 1.0  # timed twice already: not again
    assert program.plan_latency_ms(plan, "torch", least=3) == 1.0  # 3.0 timed, the faster kept


def test_width_candidates_far_under_the_budget_are_not_timed():
    """A plan that prunes more than was asked runs faster for that alone: coarse multiples on a model with
    few groups landed 16% under a MACs budget and won the race. Candidates more than 2% under are not timed
    where a closer one exists; where none is, the closest are."""
    def spent(achieved):
        return BudgetResult({"macs": 500}, {"macs": 1000}, {"macs": achieved})

    landing = {"up to 4": 495, "up to 8": 470, "up to 16": 420}
    program = _TimedPlans({"up to 4": [1.3, 1.3], "up to 8": [1.0, 1.0], "up to 16": [0.8, 0.8]})
    notes: list[str] = []
    remake = lambda s, t: (f"up to {max(s.values())}", spent(landing[f"up to {max(s.values())}"]))  # noqa: E731
    made = fastest_alignment(program, "onnxruntime", {0: 4}, remake, remake({0: 4}, None), notes)
    assert made[0] == "up to 4" and set(program.order) == {"up to 4"}, program.order
    assert "x2 (up to 8): not timed, 6.0% under the budget" in notes[-1]
    assert "x4 (up to 16): not timed, 16.0% under the budget" in notes[-1]
    landing.update({"up to 4": 460, "up to 8": 465})  # every one far under: the closest are timed
    program = _TimedPlans({"up to 4": [1.3, 1.3], "up to 8": [1.0, 1.0], "up to 16": [0.8, 0.8]})
    made = fastest_alignment(program, "onnxruntime", {0: 4}, remake, remake({0: 4}, None), notes)
    assert made[0] == "up to 8" and set(program.order) == {"up to 8"}


def test_a_budget_landing_far_under_its_target_warns():
    """Channels kept at multiples of 64 in a net of two 128-channel layers cannot land near half the MACs
    (keeping 64 of both is the only plan under it, 26%): the plan says how far under it lands, where
    round_to=1 lands within the slack and says nothing."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 128, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(128, 128, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(128, 8, 1)).eval()
    args = (torch.randn(1, 3, 16, 16),)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        _, fine = gp.prune(copy.deepcopy(model), args, budget={"macs": 0.5}, round_to=1, runtime=None)
    assert not [w for w in got if "under the target" in str(w.message)]
    assert fine.macs_after >= 0.98 * 0.5 * fine.macs_before
    with pytest.warns(gp.BudgetWarning, match="under the target") as got:  # a PruneWarning of its own class
        _, coarse = gp.prune(copy.deepcopy(model), args, budget={"macs": 0.5}, round_to=64, runtime=None)
    assert issubclass(gp.BudgetWarning, PruneWarning)
    kept = coarse.macs_after / coarse.macs_before
    assert kept < 0.3 and all(k == 64 for k, _ in coarse.kept.values())
    assert f"keeps {kept:.1%} of the original's macs where 50.0% was asked" in str(got[-1].message)
    assert got[-1].filename == __file__  # located at the user's call, not inside graphprune (errors.warn)
    assert any("under the target" in n for n in coarse.notes)


def test_notes_cite_the_step_the_whole_model_timing_kept(monkeypatch, tmp_path):
    """A user's digit CNN read 'group 6 has 32 ffn(s): 0.3 x 32 is less than one multiple of 4' where the
    widths were kept at 16 (the profile's 4, quadrupled by the whole-model timing): the note cited the
    profile's step, not the kept one."""
    measured_profile(monkeypatch, tmp_path, {"conv": 4, "linear": 4})
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(64, 8, 1)).eval()

    def latency(self, runtime=None):  # each width off a multiple of 16 costs 1 ms
        return 1.0 + sum(m.out_channels % 16 != 0 for m in self.model.modules() if isinstance(m, torch.nn.Conv2d))

    _scripted_runtime(monkeypatch, latency)
    _, report = gp.prune(copy.deepcopy(model), (torch.randn(1, 3, 8, 8),), ratio=0.3, runtime="torch")
    assert "kept x4 (up to 16)" in next(n for n in report.notes if "tried the measured multiples" in n)
    kept = sorted(report.kept.values(), key=lambda t: t[1])
    assert kept == [(32, 32), (48, 64)]  # 0.3 x 32 = 9.6 channels: less than one step of 16; 64 - 16
    idle = next(n for n in report.notes if "lose nothing" in n)
    assert "0.3 x 32 is less than one multiple of 16, the width step kept" in idle, idle


def test_the_widths_note_names_factors_that_give_the_multiples_of_a_smaller_one(monkeypatch, tmp_path):
    """A measured step of 16 scaled x2 and x4 is 32 both times (multiples stop at 32): x4 was left out of the note
    without a word while its heading said x1/x2/x4 (a user's basic-pitch listed x1 alone)."""
    monkeypatch.delenv("GRAPHPRUNE_ALIGN", raising=False)
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(measure, "measure_profile", lambda runtime, threads=1, where=CPU: measure.Profile(
        runtime, measure.machine_id(runtime, threads, where), threads, dict.fromkeys(measure.KINDS, 16), {}, 0.1))
    _scripted_runtime(monkeypatch, lambda self, runtime=None: 1.0)
    model, args = _mbv2()
    _, report = gp.prune(copy.deepcopy(model), args, budget={"macs": 0.6}, runtime="torch")
    tried = next(n for n in report.notes if n.startswith("widths: tried"))
    assert "x4: the multiples of x2" in tried and "x2 (up to 32)" in tried and "x4 (up to" not in tried, tried
