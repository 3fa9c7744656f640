"""Candidate plans timed run by run (planning/turns.py): a drifting machine must not pick the plan."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import tiny_onnx_model

import graphprune as gp
from graphprune.planning import measure, turns
from graphprune.program.onnx_program import OnnxProgram
from graphprune.program.torch_program import TorchProgram


class _Clock:
    """A process whose wall and CPU clocks advance only when a fake run spends time."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def perf_counter(self) -> float:
        return self.wall

    def process_time(self) -> float:
        return self.cpu

    def spend(self, seconds: float, paused: float = 0.0) -> None:
        self.wall += seconds + paused
        self.cpu += seconds


def _runs(clock, costs, speed, paused=None):
    """Runs of ``costs`` seconds each, the machine running round k at ``speed[k]`` (a factor on every
    run of that round); ``paused[(k, i)]`` adds wall time the process did not spend."""
    calls = [0] * len(costs)

    def run(i):
        k = calls[i] - 1  # call 0 is the warm-up
        calls[i] += 1
        factor = speed[k] if k >= 0 else 1.0
        clock.spend(costs[i] * factor, (paused or {}).get((k, i), 0.0))

    return [lambda i=i: run(i) for i in range(len(costs))]


def test_a_machine_that_drifts_between_rounds_does_not_decide(monkeypatch):
    """Plan B is truly 5% faster than A; the machine runs some rounds twice as fast as others. Timed
    one plan after another, A's quarter second could land in a fast spell and win; run by run each
    round's drift reaches both, and the figures keep the true ratio (the typical round's scale)."""
    clock = _Clock()
    monkeypatch.setattr(turns, "time", clock)
    monkeypatch.setattr(measure, "time", clock)
    monkeypatch.setattr(turns, "ROUNDS", 7)
    monkeypatch.setattr(turns, "SECONDS_PER_PLAN", 0.0)
    speed = [1.0, 0.5, 1.3, 0.6, 1.0, 2.0, 0.7]
    a, b = turns.in_rounds(_runs(clock, [0.010, 0.0095], speed))
    assert b / a == pytest.approx(0.95)
    assert a == pytest.approx(10.0)  # in ms, at the median round's speed (1.0: rounds ran at 0.5-2.0x)


def test_a_paused_round_is_left_out(monkeypatch):
    """Rounds where the scheduler paused a run (wall time the process did not spend) would make that
    plan look 50x slower; half the rounds paused would move its median. They are dropped while three
    clean rounds remain."""
    clock = _Clock()
    monkeypatch.setattr(turns, "time", clock)
    monkeypatch.setattr(measure, "time", clock)
    monkeypatch.setattr(turns, "ROUNDS", 6)
    monkeypatch.setattr(turns, "SECONDS_PER_PLAN", 0.0)
    paused = {(k, 0): 0.5 for k in range(3)}  # plan 0 paused in rounds 0-2: 3 of 6 rounds clean
    a, b = turns.in_rounds(_runs(clock, [0.010, 0.020], [1.0] * 6, paused))
    assert a == pytest.approx(10.0) and b == pytest.approx(20.0)
    clock = _Clock()
    monkeypatch.setattr(turns, "time", clock)
    monkeypatch.setattr(measure, "time", clock)
    a, _ = turns.in_rounds(_runs(clock, [0.010, 0.020], [1.0] * 6, paused), paused_check=False)
    assert a > 50.0  # a GPU's runs (no pause check): the paused rounds count


def test_each_round_starts_one_run_further_on(monkeypatch):
    """No plan always follows the same neighbour: the order rotates from round to round."""
    monkeypatch.setattr(turns, "ROUNDS", 3)
    monkeypatch.setattr(turns, "SECONDS_PER_PLAN", 0.0)
    order = []
    turns.in_rounds([lambda i=i: order.append(i) for i in range(3)])
    assert order == [0, 1, 2, 0, 1, 2, 1, 2, 0, 2, 0, 1]  # the warm-up, then rounds from 0, 1, 2


def test_real_runs_are_ordered_by_their_cost(monkeypatch):
    """Busy runs of 1x and 4x a unit of CPU work: the 4x run comes out slower (order only: this
    machine's speed is not asserted)."""
    monkeypatch.setattr(turns, "SECONDS_PER_PLAN", 0.01)

    def busy(n):
        def run():
            x = 0
            for i in range(n):
                x += i * i
            return x
        return run

    fast, slow = turns.in_rounds([busy(20_000), busy(80_000)])
    assert 0 < fast < slow


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).eval()


def test_plans_that_fit_are_timed_in_rounds_else_one_by_one(monkeypatch):
    """A PyTorch program's candidates: every plan applied and handed to in_rounds as one runner
    each (each run a forward of that plan's model; a plan with the same widths as another timed
    once, its figure shared); with no room to hold them, timed one by one."""
    x = torch.randn(2, 16)
    program = TorchProgram(_mlp(), (x,))
    plans = [gp.plan(program.graph(), program.model, ratio=r) for r in (0.25, 0.5)]
    widths = []
    program.model.register_forward_hook(lambda m, i, o: widths.append(m[0].out_features))

    def rounds(runs, label="", paused_check=True):
        for run in runs:
            run()
        return [float(k) for k in range(len(runs))]

    monkeypatch.setattr(turns, "in_rounds", rounds)
    times = turns.time_in_turns(program, plans + plans[:1], "torch")
    assert times == [0.0, 1.0, 0.0] and times.how == "run by run"
    assert widths == [48, 32]  # one run per distinct widths, a forward of its own plan's model (copies keep the hook)
    monkeypatch.setattr(turns, "HELD_BYTES", 0)
    one_by_one = []
    monkeypatch.setattr(TorchProgram, "plan_latency_ms",
                        lambda self, plan, runtime, least=1: one_by_one.append(plan) or 1.0)
    times = turns.time_in_turns(program, plans, "torch")
    assert times == [1.0, 1.0] and times.how == "one by one"
    assert one_by_one == [plans[0], plans[1], plans[0], plans[1]]  # twice each, taking turns


def test_runners_run_the_model_on_each_runtime():
    """A PyTorch model's runner is its eager forward (onnxruntime: none, each plan is exported);
    an ONNX model's is an onnxruntime session's run."""
    model, x = _mlp(), torch.randn(2, 16)
    program = TorchProgram(copy.deepcopy(model), (x,))
    calls = []
    program.model.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    with program.timing("torch"):
        assert torch.get_num_threads() == 1
        program.runner("torch")()
    assert calls == [torch.Size([2, 8])] and program.runner("onnxruntime") is None
    onnx_program = OnnxProgram(tiny_onnx_model(), feeds={"x": np.ones((2, 4), np.float32)})
    out = onnx_program.runner("onnxruntime")()
    assert len(out) == 1 and onnx_program.runner("torch") is None


def test_stand_in_programs_without_runners_are_timed_one_by_one():
    """A program that offers no runner (a stand-in with plan_latency_ms only) still gets figures."""
    program = SimpleNamespace(plan_latency_ms=lambda plan, runtime, least=1: {"a": 2.0, "b": 1.0}[plan])
    assert turns.time_in_turns(program, ["a", "b"], "torch") == [2.0, 1.0]
