"""Forwards that check their input against a module attribute (diffusers' ``assert
hidden_states.shape[1] == self.channels``): the rewrite updates the attribute where the plan gives it one
size, refuses where the attribute is also read as a number, and names the failing line otherwise."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import graphprune as gp


class Checked(nn.Module):
    """A 1x1 convolution behind a check of its input width, as diffusers' Upsample2D writes it."""

    def __init__(self, channels: int, scaled: bool = False):
        super().__init__()
        self.channels = channels
        self.out_channels = channels
        self.scaled = scaled
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        assert x.shape[1] == self.channels
        y = self.conv(x)
        return y / math.sqrt(self.channels) if self.scaled else y


class Net(nn.Module):
    def __init__(self, scaled: bool = False, literal: bool = False):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.mid = Checked(16, scaled)
        self.head = nn.Conv2d(16, 4, 1)
        self.literal = literal

    def forward(self, x):
        h = torch.relu(self.stem(x))
        if self.literal:
            assert h.shape[1] == 16, "stem width"
        return self.head(torch.relu(self.mid(h)))


def _net(**kw) -> Net:
    torch.manual_seed(0)
    return Net(**kw).eval()


X = (torch.randn(1, 3, 8, 8),)


def test_an_attribute_the_forward_checks_its_input_against_takes_the_pruned_width():
    model = _net()
    ref = model(*X)
    pruned, report = gp.prune(model, X, ratio=0.25, round_to=1, runtime=None, verify=True)
    # the plan keeps 12 of the stem's 16 channels (the mid conv's input) and 12 of its own outputs
    assert pruned.stem.out_channels == 12 and pruned.mid.conv.out_channels == 12
    assert pruned.mid.channels == 12, "the checked attribute follows the input the module is handed"
    assert report.oracle.passed
    other = torch.randn(2, 3, 8, 8)
    assert pruned(other).shape == (2,) + ref.shape[1:]


def test_an_attribute_also_read_as_a_number_is_refused_not_rewritten():
    """The same attribute divides the output by sqrt(channels): updating it would pass the shape
    proof and change the model's numbers, so the rewrite refuses and names the module."""
    model = _net(scaled=True)
    with pytest.raises(gp.RewriteError, match="not only a size check") as err:
        gp.prune(model, X, ratio=0.25, round_to=1, runtime=None)
    assert "mid" in err.value.modules
    assert model.mid.channels == 16 and model.stem.out_channels == 16, "a refused rewrite leaves the model whole"


def test_a_literal_size_check_is_named_by_its_line():
    """``assert h.shape[1] == 16`` has no attribute to update: the error quotes the line that
    failed (an AssertionError with no message said nothing before)."""
    model = _net(literal=True)
    with pytest.raises(gp.RewriteError, match=r"raised at .*test_guards\.py:\d+ \(`assert h\.shape\[1\] == 16"):
        gp.prune(model, X, ratio=0.25, round_to=1, runtime=None)
