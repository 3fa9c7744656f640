"""The default call on grouped convolutions (no attention): channels by whole groups where those cut
exactly (ResNeXt), inside every group where the groups cannot go whole (IGCV3's channel shuffle) or meet
in a softmax (ResNeSt's radix), widths inside groups at the runtime's multiples over all groups."""
from __future__ import annotations

import torch
from torch import nn

import graphprune as gp


class _Shuffle(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x):
        b, c, h, w = x.shape
        return x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class _IGCV3(nn.Module):
    """IGCV3's unit: grouped 1x1 (2 groups), channel shuffle, depthwise 3x3, grouped 1x1."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.a = nn.Conv2d(3, 64, 3, padding=1), nn.Conv2d(64, 192, 1, groups=2)
        self.shuffle, self.dw = _Shuffle(2), nn.Conv2d(192, 192, 3, padding=1, groups=192)
        self.b, self.head = nn.Conv2d(192, 64, 1, groups=2), nn.Conv2d(64, 10, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + self.b(torch.relu(self.dw(self.shuffle(torch.relu(self.a(x))))))
        return self.head(x).mean((2, 3))


class _SplitAttention(nn.Module):
    """ResNeSt's split attention, radix 2: the two splits are weighed by a softmax across them."""

    def __init__(self, c: int = 64, radix: int = 2) -> None:
        super().__init__()
        self.c, self.radix = c, radix
        self.stem, self.conv = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(c, c * radix, 3, padding=1, groups=radix)
        self.fc1, self.fc2, self.head = nn.Conv2d(c, 32, 1), nn.Conv2d(32, c * radix, 1), nn.Conv2d(c, 10, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = torch.relu(self.conv(x)).view(x.shape[0], self.radix, self.c, *x.shape[2:])
        gap = y.sum(1).mean((2, 3), keepdim=True)
        att = torch.softmax(self.fc2(torch.relu(self.fc1(gap))).view(x.shape[0], self.radix, self.c, 1, 1), dim=1)
        return self.head((y * att).sum(1)).mean((2, 3))


class _NeXt(nn.Module):
    """ResNeXt's bottleneck: 8 groups of 8 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.a = nn.Conv2d(3, 64, 3, padding=1), nn.Conv2d(64, 64, 1)
        self.g, self.b, self.head = nn.Conv2d(64, 64, 3, padding=1, groups=8), nn.Conv2d(64, 64, 1), nn.Conv2d(64, 10, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + self.b(torch.relu(self.g(torch.relu(self.a(x)))))
        return self.head(x).mean((2, 3))


def _prune(cls, **kw):
    torch.manual_seed(0)
    model, x = cls().eval(), torch.randn(1, 3, 16, 16)
    model, report = gp.prune(model, (x,), budget={"macs": 0.6}, verify=True, measure_latency=False, runtime=None, **kw)
    cut = {report.kinds[g] for g, (kept, size) in report.kept.items() if kept < size}
    return model, report, cut


def test_groups_behind_a_shuffle_are_cut_inside():
    """IGCV3's groups cannot go whole (the shuffle mixes them); the default call used to cut only the stem
    and refuse deeper budgets. Now it cuts inside every group, exactly."""
    model, report, cut = _prune(_IGCV3)
    assert report.oracle.verdict == "PASS"
    assert "group_channel" in cut
    assert model.a.out_channels < 192 and model.a.groups == model.b.groups


def test_groups_meeting_in_a_softmax_are_not_cut_whole():
    """ResNeSt: cutting one of two radix splits changes the softmax across them (not exact); the default
    call cuts the channels inside each split instead and stays provable."""
    model, report, cut = _prune(_SplitAttention)
    assert report.oracle.verdict == "PASS"
    assert "conv_group" not in cut and "group_channel" in cut
    assert model.conv.groups == 2 and model.conv.out_channels < 128


def test_groups_that_cut_exactly_go_whole():
    """ResNeXt: whole groups cut exactly; the widths inside them stay (8 a group)."""
    model, report, cut = _prune(_NeXt)
    assert report.oracle.verdict == "PASS"
    assert "conv_group" in cut and "group_channel" not in cut
    assert model.g.in_channels // model.g.groups == 8


def test_widths_inside_groups_keep_the_channel_multiple():
    """round_to=16 over 2 groups: 8 a group, so every grouped convolution's channels stay multiples of 16."""
    model, report, cut = _prune(_IGCV3, round_to=16)
    assert "group_channel" in cut
    for conv in (model.a, model.dw, model.b):
        assert conv.out_channels % 16 == 0 and conv.in_channels % 16 == 0, conv
