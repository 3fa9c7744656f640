"""Regressions from a new user's trial of MONAI's medical-imaging networks (2026-12-07), each in plain
torch: a module registered under two paths, a head count a forward keeps in a tuple, an InstanceNorm
without weights or statistics, and outputs too small for the oracle to judge."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import graphprune as gp


class Aliased(nn.Module):
    """One convolution reachable under two paths (MONAI's DynUNet: ``input_block`` is also
    ``skip_layers.downsample``)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.alias = nn.Sequential(self.a)
        self.b = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.b(torch.relu(self.alias(x)))


def test_a_module_under_two_paths_prunes_and_keeps_the_users_weights():
    torch.manual_seed(0)
    m = Aliased().eval()
    x = torch.randn(2, 3, 8, 8)
    pruned, report = gp.prune(m, (x,), ratio=0.5, verify=True)
    # pruned in place, its weights still on its device: the trace's stand-ins were left on `meta` once
    # (and the ranking refused "no values (meta device?)", the model unusable afterwards)
    assert pruned is m and all(p.device.type == "cpu" for p in m.parameters())
    assert pruned.a.out_channels == 8 and pruned.alias[0] is pruned.a
    assert report.oracle.verdict == "PASS"
    assert pruned(x).shape == m(x).shape


class TupleHeads(nn.Module):
    """Attention whose head split is read from a dict of sizes, which no rewrite reaches, so pruned heads would come
    back at the old count. (A short tuple or list attribute is reached: ``split=(3, heads)`` prunes its heads.)"""

    def __init__(self, d=32, heads=4, ffn=256, reachable=False):
        super().__init__()
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.sizes = None if reachable else {"split": (3, heads)}
        self.split = (3, heads)
        self.fc1, self.fc2 = nn.Linear(d, ffn), nn.Linear(ffn, d)

    def forward(self, x):
        b, n, _ = x.shape
        split = self.split if self.sizes is None else self.sizes["split"]
        q, k, v = self.qkv(x).reshape(b, n, *split, -1).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) * 0.35, -1) @ v
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, -1))
        return x + self.fc2(torch.relu(self.fc1(x)))


def test_heads_the_rewrite_cannot_reach_are_kept_whole_and_planned_again():
    torch.manual_seed(0)
    m = TupleHeads().eval()
    x = torch.randn(2, 5, 32)
    with pytest.warns(gp.PruneWarning, match="kept 1 group"):
        pruned, report = gp.prune(m, (x,), budget={"macs": 0.8}, targets=("head", "ffn"), verify=True)
    assert pruned.qkv.out_features == 96 and pruned.split == (3, 4)  # every head kept, at its width
    assert pruned.fc1.out_features < 256
    assert report.oracle.verdict == "PASS"
    assert torch.isfinite(pruned(torch.randn(3, 7, 32))).all()
    # where keeping the heads whole leaves nothing of the kind asked for, the error names the layers
    with pytest.raises(gp.RewriteError, match=r"\[.proj., .qkv.\]|\[.qkv., .proj.\]"):
        gp.prune(m, (x,), ratio=0.5, targets=("head",))
    # the same split kept in a tuple attribute takes the pruned head count
    pruned, report = gp.prune(TupleHeads(reachable=True).eval(), (x,), ratio=0.5, targets=("head",), verify=True)
    assert pruned.split == (3, 2) and pruned.qkv.out_features == 48 and report.oracle.verdict == "PASS"


class BareNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 16, 3, padding=1)
        self.norm = nn.InstanceNorm3d(16)  # affine=False, track_running_stats=False: no tensor says its width
        self.head = nn.Conv3d(16, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.norm(self.conv(x))))


def test_an_instance_norm_without_tensors_gets_its_new_width():
    torch.manual_seed(0)
    m = BareNorm().eval()
    x = torch.randn(1, 1, 6, 6, 6)
    pruned, _ = gp.prune(m, (x,), ratio=0.5)
    assert pruned.norm.num_features == pruned.conv.out_channels == 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns on every forward where num_features is stale
        pruned(x)


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 32), nn.Linear(32, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


class Vanishing(Plain):
    """Outputs around 1e-13 (a randomly initialised deep net whose activations vanish)."""

    def forward(self, x):
        return super().forward(x) * 1e-12


def test_outputs_under_the_tolerance_are_not_called_a_pass():
    torch.manual_seed(0)
    pruned, report = gp.prune(Vanishing().eval(), (torch.randn(4, 8),), ratio=0.5, verify=True)
    assert report.oracle.max_abs_diff < 1e-5 and report.oracle.signal < 1e-5
    assert report.oracle.verdict == "NOT CHECKED"
    assert "no difference could fail" in str(report.oracle)
    # the same model at a scale the tolerance can judge passes
    torch.manual_seed(0)
    assert gp.prune(Plain().eval(), (torch.randn(4, 8),), ratio=0.5, verify=True)[1].oracle.verdict == "PASS"


def test_a_3d_convolution_has_the_patches_its_weight_multiplies():
    from graphprune.calib.stats import unfold3d

    torch.manual_seed(0)
    x, conv = torch.randn(2, 3, 7, 8, 9), nn.Conv3d(3, 5, (3, 2, 3), stride=(2, 1, 2), padding=(1, 0, 2), dilation=(1, 2, 2))
    want = conv(x) - conv.bias.view(1, -1, 1, 1, 1)
    got = unfold3d(x, conv.kernel_size, conv.stride, conv.padding, conv.dilation) @ conv.weight.reshape(5, -1).T
    assert torch.allclose(got, want.permute(0, 2, 3, 4, 1).reshape(-1, 5), atol=1e-5)


class Volume(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv3d(1, 24, 3, padding=1), nn.Conv3d(24, 24, 3, padding=1), nn.Conv3d(24, 2, 1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def test_a_calibrated_3d_prune_refits_its_convolutions():
    torch.manual_seed(0)
    m = Volume().eval()
    data = [(torch.randn(2, 1, 8, 8, 8).cumsum(-1) * 0.3,) for _ in range(4)]
    ref = m(data[0][0]).detach()
    pruned, report = gp.prune(m, data[0], ratio=0.5, calib=data, compensate=True, measure_latency=False)
    sites = report.compensation.sites
    assert {s.weight for s in sites} >= {"b.weight", "c.weight"}  # 3x3x3 and 1x1x1: both refit
    assert all(s.error_after < s.error_before for s in sites)
    assert "layer(s) changed" in str(report)
    assert torch.isfinite(pruned(data[0][0])).all() and pruned(data[0][0]).shape == ref.shape


def test_the_report_names_layers_that_lost_inputs_but_were_not_refit():
    from types import SimpleNamespace

    from graphprune.report.prune_report import compensation_text

    comp = SimpleNamespace(sites=[], skipped=["dw.weight: grouped convolution, not refit"])
    text = compensation_text(comp)
    assert "dw.weight: grouped convolution, not refit" in text and "no linear or convolution lost" not in text
    assert "no linear or convolution lost" in compensation_text(SimpleNamespace(sites=[], skipped=[]))


def test_every_layer_whose_heads_the_rewrite_cannot_reach_is_kept_whole_in_one_round():
    torch.manual_seed(0)
    m = nn.Sequential(TupleHeads(), TupleHeads(), TupleHeads()).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruned, report = gp.prune(m, (torch.randn(2, 5, 32),), budget={"macs": 0.8}, targets=("head", "ffn"), verify=True)
    rounds = [str(w.message) for w in caught if "planned again" in str(w.message)]
    assert len(rounds) == 1 and rounds[0].startswith("kept 3 group(s) whole")  # one round, not one a layer
    assert all(layer.qkv.out_features == 96 for layer in pruned) and report.oracle.verdict == "PASS"


def test_a_list_of_example_inputs_is_said_to_be_one_argument():
    """forward(x, y) given [x, y]: torch.export's failure is explained by the list (one argument)."""
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 2, 1)

        def forward(self, x, y):
            return self.head(self.conv(x) + self.conv(y))

    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(gp.TraceError, match=r"one list of 2, passed to forward\(\) as one argument: give a tuple"):
        gp.prune(Two().eval(), [x, x], ratio=0.5)
    pruned, _ = gp.prune(Two().eval(), (x, x), ratio=0.5)
    assert pruned.conv.out_channels == 4
