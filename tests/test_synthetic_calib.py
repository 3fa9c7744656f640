"""Calibration images distilled from BatchNorm statistics (graphprune/calib/synthetic.py)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import graphprune as gp
from graphprune.calib import bn_statistics_loss, synthetic_images
from graphprune.errors import PlanError


def _cnn(bn: bool = True) -> nn.Module:
    """A small classifier whose BatchNorms hold statistics of shifted, scaled inputs (not noise's)."""
    torch.manual_seed(0)
    norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), norm(8), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1),
                          norm(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
    if bn:
        model.train()
        with torch.no_grad():
            for _ in range(20):  # running statistics of data unlike the N(0, 1) starting noise
                model(torch.randn(16, 3, 12, 12) * 0.5 + torch.tensor([1.0, -0.5, 0.2])[:, None, None])
    return model.eval()


def test_images_match_the_batchnorm_statistics_better_than_their_starting_noise():
    model = _cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = synthetic_images(model, 6, (3, 12, 12), steps=60, batch_size=4, lr=0.05)
    assert [b[0].shape for b in batches] == [(4, 3, 12, 12), (2, 3, 12, 12)]
    noise = torch.randn((4, 3, 12, 12), generator=torch.Generator().manual_seed(0))  # the first batch's start
    assert bn_statistics_loss(model, batches[0][0]) < 0.3 * bn_statistics_loss(model, noise)
    # the model is handed back as it came: weights, eval mode, gradients on
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training and all(p.requires_grad for p in model.parameters())
    assert all(not b[0].requires_grad for b in batches)


def test_the_same_seed_gives_the_same_images_and_options_apply():
    model = _cnn()
    kw = dict(steps=5, batch_size=3, class_weight=1.0, tv=0.1, l2=0.01, jitter=2, bounds=(-1.0, 1.0))
    a = synthetic_images(model, 3, (3, 12, 12), **kw)[0][0]
    b = synthetic_images(model, 3, (3, 12, 12), **kw)[0][0]
    c = synthetic_images(model, 3, (3, 12, 12), seed=1, **kw)[0][0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1.0 and a.max() <= 1.0


def test_a_model_without_batchnorm_or_bad_arguments_are_refused():
    with pytest.raises(PlanError, match="no BatchNorm layer.*calib="):
        synthetic_images(_cnn(bn=False), 4, (3, 12, 12))
    with pytest.raises(PlanError, match="n must be"):
        synthetic_images(_cnn(), 0, (3, 12, 12))
    with pytest.raises(PlanError, match="shape must be"):
        synthetic_images(_cnn(), 2, (3, 0, 12))


def test_prune_calibrates_on_synthetic_images_alone():
    model = _cnn()
    calib = synthetic_images(model, 8, (3, 12, 12), steps=10, batch_size=4)
    pruned, rep = gp.prune(model, (torch.randn(1, 3, 12, 12),), ratio=0.25, calib=calib)
    assert pruned(torch.randn(2, 3, 12, 12)).shape == (2, 5)
    assert rep.params_after < rep.params_before
