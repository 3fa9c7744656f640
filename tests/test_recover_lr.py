"""recover()'s learning-rate probe (graphprune/api/recover_lr.py): a few AdamW steps per rate from
the same weights, the rate with the lowest held-out score kept, the weights restored."""
from __future__ import annotations

import copy

import torch

import graphprune as gp
from graphprune.api.recover_lr import PROBE_LRS, PROBE_STEPS, probe_lr


def test_the_probe_keeps_the_rate_that_lands_nearest():
    # Adam's first steps move a weight by about the rate (m / sqrt(v) = 1 for a gradient of constant
    # sign), so from 0 toward 3e-5, PROBE_STEPS = 3 steps of 1e-5 land on it; 1e-6 stops 2.7e-5 short,
    # 1e-3 overshoots by ~1e-3 on its first step and 1e-4 by 7e-5 (then swings back, ending ~2e-5 off).
    assert PROBE_STEPS == 3 and 1e-5 in PROBE_LRS
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    target = 3e-5

    def loss_of(batch, where):
        return ((model.weight - target) ** 2).sum()

    def score() -> float:
        return float(((model.weight - target) ** 2).sum())

    batches = iter([("batch", None)] * PROBE_STEPS)
    lr, tried = probe_lr(model, list(model.parameters()), loss_of, batches, score)
    assert lr == 1e-5
    assert [r for r, _ in tried] == list(PROBE_LRS)
    assert float(model.weight) == 0.0 and model.weight.grad is None  # restored, no stale gradient


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).eval()


def test_recover_probes_without_lr_and_not_with_one():
    teacher = _mlp()
    g = torch.Generator().manual_seed(1)
    data = [torch.randn(8, 16, generator=g) for _ in range(10)]
    student, _ = gp.prune(copy.deepcopy(teacher), (data[0],), ratio=0.5, round_to=1, runtime=None)
    probed = gp.recover(copy.deepcopy(student), teacher, data, steps=60)
    assert [r for r, _ in probed.lr_probe] == list(PROBE_LRS)
    best = min(probed.lr_probe, key=lambda t: t[1])
    assert probed.lr == best[0]
    given = gp.recover(copy.deepcopy(student), teacher, data, steps=60, lr=3e-3)
    assert given.lr == 3e-3 and given.lr_probe == []
    short = gp.recover(copy.deepcopy(student), teacher, data, steps=20)  # too short to pay for a probe
    assert short.lr == 1e-3 and short.lr_probe == []


def test_a_failing_probe_leaves_the_weights_as_they_were():
    model = torch.nn.Linear(3, 1)
    before = [p.detach().clone() for p in model.parameters()]
    calls = []

    def loss_of(batch, where):
        calls.append(where)
        if len(calls) > PROBE_STEPS:  # the second rate's first step fails, after the first rate trained
            raise RuntimeError("boom")
        return model(torch.ones(2, 3)).sum()

    try:
        probe_lr(model, list(model.parameters()), loss_of, iter([("b", None)] * PROBE_STEPS), lambda: 0.0)
    except RuntimeError:
        pass
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
