"""Candidate plans' timings kept per machine (graphprune/planning/plan_cache.py): a close race between
candidates went either way from run to run, so one command gave different models; now a second prune
that weighs the same candidates reuses the first one's timings and keeps the same plan."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import graphprune as gp
from graphprune import pipeline
from graphprune.planning import measure, plan_cache, turns, widths
from graphprune.program.torch_program import TorchProgram


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).eval()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path))
    monkeypatch.setenv(plan_cache.ENV, "1")
    return tmp_path


def _races(monkeypatch, orders):
    """in_rounds that ranks the candidates by the next of ``orders`` (each a list of figures)."""
    calls = iter(orders)
    monkeypatch.setattr(turns, "in_rounds", lambda runs, label="", paused_check=True: next(calls)[:len(runs)])


def test_the_same_candidates_are_not_timed_twice(cache, monkeypatch):
    program = TorchProgram(_mlp(), (torch.randn(2, 16),))
    plans = [gp.plan(program.graph(), program.model, ratio=r) for r in (0.25, 0.5)]
    _races(monkeypatch, [[2.0, 1.0], [1.0, 2.0], [5.0, 6.0]])
    first = turns.time_in_turns(program, plans, "torch")
    assert first == [2.0, 1.0] and first.how == "run by run"
    again = turns.time_in_turns(program, plans, "torch")  # the race would now go the other way
    assert again == [2.0, 1.0] and again.how == "run by run by an earlier prune on this machine"
    assert len(list((cache / "plans").glob("*.json"))) == 1
    other = [gp.plan(program.graph(), program.model, ratio=r) for r in (0.25, 0.75)]  # other candidates: timed
    assert turns.time_in_turns(program, other, "torch") == [1.0, 2.0]
    monkeypatch.setenv(plan_cache.ENV, "0")  # off: timed afresh
    assert turns.time_in_turns(program, plans, "torch") == [5.0, 6.0]


@pytest.mark.parametrize("kept", [True, False])
def test_one_command_gives_one_model(cache, tmp_path, monkeypatch, kept):
    """The default call's width tuning (onnxruntime's multiples x1/x2/x4) on a race that flips between
    two prunes: with the cache both write the same file; without it (the check that this test can
    fail) they keep different widths."""
    monkeypatch.delenv("GRAPHPRUNE_ALIGN", raising=False)  # the measured multiples, as a user's prune has
    monkeypatch.setenv(plan_cache.ENV, "1" if kept else "0")
    # a measured profile whose conv multiple scaled x1/x2/x4 gives three widths (this machine's may favour x2, where
    # 22 channels round alike at every scale, one candidate is timed, and nothing could differ)
    measured = measure.load_profile("onnxruntime")
    wide = dataclasses.replace(measured, align={**measured.align, "conv": 8})
    real = measure.load_profile
    for module in (widths, pipeline):
        monkeypatch.setattr(module, "load_profile",
                            lambda runtime, *a, **k: wide if runtime == "onnxruntime" else real(runtime, *a, **k))
    torch.manual_seed(0)
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3), torch.nn.ReLU(), torch.nn.Conv2d(32, 8, 3)).eval()
    src = tmp_path / "cnn.onnx"
    gp.export_onnx(cnn, (torch.randn(1, 3, 16, 16),), src)
    flips = iter([False, True])

    def race(runs, label="", paused_check=True):
        order = [float(i) for i in range(len(runs))]
        return order[::-1] if next(flips) else order  # the first candidate wins, then the last

    monkeypatch.setattr(turns, "in_rounds", race)
    for name in ("a.onnx", "b.onnx"):
        report = gp.prune_onnx(src, tmp_path / name, ratio=0.3)
        assert any(n.startswith("widths: tried") for n in report.notes), report.notes
    same = (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert same is kept


def test_the_original_is_timed_once_per_machine(cache, monkeypatch):
    """The time tilt scales every estimate by the original's latency: a fresh figure each prune bent the
    tilts and so the candidates, and one command wrote three models in four runs. Kept, it is timed once."""
    figures = iter([2.0, 3.0, 4.0])
    monkeypatch.setattr(TorchProgram, "latency_ms", lambda self, runtime=None: next(figures))
    program = TorchProgram(_mlp(), (torch.randn(2, 16),))
    assert plan_cache.original_ms(program, "torch") == 2.0
    assert plan_cache.original_ms(TorchProgram(_mlp(), (torch.randn(2, 16),)), "torch") == 2.0  # same structure
    monkeypatch.setenv(plan_cache.ENV, "0")  # caching off: timed afresh
    assert plan_cache.original_ms(program, "torch") == 3.0
