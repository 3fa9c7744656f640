"""tools/diag_cnn.py's measures, which docs/runtime.md's one-shot figures are read with: agreement,
agreement where the original is confident, KL and relative error; BatchNorm re-estimation leaves the
weights and the module's mode alone and changes only the running statistics."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import diag_cnn  # noqa: E402


def test_scores_of_identical_and_of_swapped_predictions():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(6, 1000, generator=g)
    ref[:3, 7] = 30.0  # three confident rows (probability ~1 on class 7)
    same = diag_cnn.scores(ref, ref.clone())
    assert same["agreement"] == 1.0 and same["agreement_confident"] == 1.0 and same["confident"] == 3
    assert same["kl"] == pytest.approx(0.0, abs=1e-6) and same["rel_error"] == 0.0
    flipped = ref.clone()
    flipped[0, 8] = 40.0  # one confident row changes its class
    s = diag_cnn.scores(ref, flipped)
    assert s["agreement"] == pytest.approx(5 / 6) and s["agreement_confident"] == pytest.approx(2 / 3)
    assert s["kl"] > 1.0  # row 0 lost nearly all its probability on class 7: ~10 nats over 6 rows
    assert set(diag_cnn.scores(ref, flipped, classes=False)) == {"rel_error"}  # features: no classes


def test_reestimate_bn_changes_only_the_running_statistics():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).eval()
    w = m[0].weight.clone()
    batches = [(torch.randn(2, 3, 8, 8) * 3 + 1,) for _ in range(3)]
    assert diag_cnn.reestimate_bn(m, batches) == 1
    assert not m.training and m[1].momentum == 0.1 and torch.equal(m[0].weight, w)
    with torch.no_grad():
        y = torch.cat([m[0](b) for (b,) in batches])
    assert torch.allclose(m[1].running_mean, y.mean((0, 2, 3)), atol=1e-4)  # the cumulative mean of equal batches
