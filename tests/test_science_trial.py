"""Regression tests for what the eighth new-user trial found (GNNs with torch_geometric, neural
operators with neuraloperator, TabNet; docs/real_models.md, "An eighth trial"), in plain torch."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import graphprune as gp


class _Cached(nn.Module):
    """Caches a grid for the last resolution in a plain attribute, made where the weights are (as
    neuraloperator's GridEmbedding2D does): traced on meta stand-ins, the cache held a meta tensor."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 2, 1)
        self._grid, self._res = None, None

    def forward(self, x):
        if self._grid is None or self._res != tuple(x.shape[-2:]):
            self._grid = torch.linspace(0, 1, x.shape[-1], device=self.conv.weight.device)
            self._res = tuple(x.shape[-2:])
        return self.head(torch.relu(self.conv(x + self._grid)))


def test_a_forward_that_caches_in_an_attribute_leaves_the_model_working():
    x = torch.randn(2, 3, 16, 16)
    fresh = _Cached().eval()
    gp.count_macs(fresh, (x,))
    assert fresh._grid is None and fresh._res is None  # as before the trace
    assert fresh(x).shape == (2, 2, 16, 16)
    ran = _Cached().eval()
    ran(torch.randn(1, 3, 24, 24))  # last ran at another resolution: its cache is kept as it was
    pruned, report = gp.prune(ran, (x,), ratio=0.5, verify=True)
    assert report.oracle.verdict == "PASS" and pruned.conv.out_channels == 4
    assert pruned._grid.device.type == "cpu"  # real runs (oracle, timing) may refill it; never a stand-in
    assert pruned(x).shape == (2, 2, 16, 16)


class _Spectral(nn.Module):
    """A complex weight beside real layers (a spectral convolution's, read through its real part)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 2, 1)
        self.spec = nn.Parameter(torch.randn(8, dtype=torch.cfloat))

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)) * self.spec.real.view(1, -1, 1, 1))


def test_a_complex_weight_is_read_by_its_magnitude_without_a_warning():
    from graphprune.program.torch_program import TorchProgram

    x = torch.randn(1, 3, 8, 8)
    model = _Spectral().eval()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        weights = TorchProgram(model, (x,)).tensors()
    assert not [w for w in seen if "complex" in str(w.message)]
    assert weights["spec"].dtype.kind == "f"
    assert (weights["spec"] == model.spec.detach().abs().numpy()).all()


class _Between(nn.Module):
    """lin (8 -> 16) and out (16 -> 4) around what a subclass's forward puts between them."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.out = nn.Linear(8, 16), nn.Linear(16, 4)


class _Scatter(_Between):
    """Message passing as PyG writes it: features summed into their target nodes with scatter_add_."""

    def forward(self, x, index):
        h = self.lin(x)
        agg = torch.zeros_like(h).scatter_add_(0, index.unsqueeze(1).expand_as(h), h)
        return self.out(torch.relu(agg))


def test_message_passing_prunes_its_features():
    """scatter_add_ into a new_zeros target along the node dim (PyG's sum aggregation): the feature dim is
    a channel through it, and the pruned model runs on another graph (before: every width frozen)."""
    x, index = torch.randn(10, 8), torch.randint(0, 10, (10,))
    pruned, report = gp.prune(_Scatter().eval(), (x, index), ratio=0.5, verify=True)
    assert report.oracle.verdict == "PASS" and pruned.lin.out_features == 8 and pruned.out.in_features == 8
    assert pruned(torch.randn(7, 8), torch.randint(0, 7, (7,))).shape == (7, 4)


class _PyGLike(_Between):
    """PyG's scatter: out = src.new_zeros(size) with the size read from src, then out.scatter_reduce_
    (a mean over incoming messages, include_self=False), plus an index_add_ (a weighted sum)."""

    def forward(self, x, index):
        h = self.lin(x)
        size = list(h.size())
        mean = h.new_zeros(size).scatter_reduce_(0, index.view(-1, 1).expand_as(h), h, "mean", include_self=False)
        summed = torch.zeros_like(h).index_add_(0, index, h)
        return self.out(torch.relu(mean + summed))


def test_pyg_style_aggregations_prune():
    x, index = torch.randn(12, 8), torch.randint(0, 6, (12,))
    pruned, report = gp.prune(_PyGLike().eval(), (x, index), ratio=0.5, verify=True)
    assert report.oracle.verdict == "PASS" and pruned.lin.out_features == 8
    assert pruned(torch.randn(5, 8), torch.randint(0, 5, (5,))).shape == (5, 4)


class _OtherScatters(_Between):
    """The other scatter forms: an assignment (scatter with src, unique positions) and index_reduce_ (amax)."""

    def forward(self, x, index):
        h = self.lin(x)
        placed = torch.zeros_like(h).scatter(0, index.view(-1, 1).expand_as(h), h)
        peak = torch.zeros_like(h).index_reduce_(0, index, h, "amax", include_self=False)
        return self.out(torch.relu(placed + peak))


def test_scatter_assignment_and_index_reduce_prune_exactly():
    x, index = torch.randn(10, 8), torch.randperm(10)
    pruned, report = gp.prune(_OtherScatters().eval(), (x, index), ratio=0.5, verify=True)
    assert report.oracle.verdict == "PASS" and pruned.lin.out_features == 8
    assert pruned(torch.randn(6, 8), torch.randperm(6)).shape == (6, 4)


class _NoRule(_Between):
    def forward(self, x):
        return self.out(torch.renorm(self.lin(x), 2, 1, 1.0))  # renorm has no coupling rule


def test_a_model_frozen_by_an_op_without_a_rule_is_told_where_a_rule_goes():
    with pytest.raises(gp.PlanError) as err:
        gp.prune(_NoRule().eval(), (torch.randn(10, 8),), ratio=0.5)
    text = str(err.value)
    assert "aten.renorm" in text and "no coupling rule for that op" in text and "graphprune/rules/" in text
    assert "quantization" not in text


class _SharedHeadDim(nn.Module):
    """PyG's TransformerConv in small: q, k and v viewed at (self.heads, self.out_channels); v's channels
    reach the model's output (whole), q's and k's do not, so a plan cutting q and k leaves the one
    attribute right for them and wrong for v. An MLP beside it is what the rewrite can prune."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.heads, self.out_channels = 2, 8
        self.q, self.k, self.v = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)
        self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, x):
        H, C = self.heads, self.out_channels
        q, k, v = self.q(x).view(-1, H, C), self.k(x).view(-1, H, C), self.v(x).view(-1, H, C)
        y = (torch.sigmoid((q * k).sum(-1, keepdim=True)) * v).reshape(-1, H * C)
        return y, self.down(torch.relu(self.up(x)))


def test_sizes_the_rewrite_cannot_reach_are_kept_whole_and_planned_again():
    """The pruned forward fails in v's view; the error names the groups those views spell, so the default
    call keeps them whole and prunes the rest (before: no group named, and the call refused)."""
    x = torch.randn(6, 16)
    pruned, report = gp.prune(_SharedHeadDim().eval(), (x,), ratio=0.5, verify=True)
    assert report.oracle.verdict == "PASS"
    assert pruned.q.out_features == pruned.k.out_features == 16 and pruned.up.out_features == 16
    assert any("planned again" in n for n in report.notes), report.notes
    assert [t.shape for t in pruned(torch.randn(3, 16))] == [(3, 16), (3, 4)]


class _Spectral1d(nn.Module):
    """A spectral step between two 1-D convolutions (a neural operator's FFT, which MACs do not count)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = nn.Conv1d(2, 8, 1), nn.Conv1d(8, 16, 1), nn.Conv1d(16, 2, 1)

    def forward(self, x):
        h = self.a(x)
        h = torch.fft.irfft(torch.fft.rfft(h, dim=-1), n=h.shape[-1], dim=-1)
        return self.c(torch.relu(self.b(h)))


def test_the_report_says_what_the_mac_count_leaves_out():
    _, report = gp.prune(_Spectral1d().eval(), (torch.randn(1, 2, 16),), ratio=0.5)
    note = next(n for n in report.notes if n.startswith("MACs count"))
    assert "FFT op(s)" in note and "fft" in note
    _, plain = gp.prune(nn.Sequential(nn.Conv1d(2, 8, 1), nn.Conv1d(8, 2, 1)).eval(), (torch.randn(1, 2, 16),), ratio=0.5)
    assert not any(n.startswith("MACs count") for n in plain.notes)


def test_an_export_that_differs_names_the_output():
    """TabNet's second output (a loss term) is NaN in onnxruntime while its prediction matches: the
    refusal names that output. (Checked on the message the export builds from its outputs.)"""
    import numpy as np

    from graphprune.io import onnx_export as ox

    class Session:
        def get_outputs(self):
            return [type("O", (), {"name": n})() for n in ("logits", "m_loss")]

    want = [np.ones((2, 3), np.float32), np.float32([0.5])]
    got = [want[0] + np.float32(2 ** -10), np.float32([np.nan])]  # a difference float32 holds exactly
    text = ox._worst_output(got, want, Session())
    assert "output 1 'm_loss' of 2" in text and "NaN in onnxruntime only" in text and "differ by at most 0.000977" in text
    assert ox._worst_output(got[:1], want[:1], Session()) == ""


class _GridCache(nn.Module):
    """A grid per size kept in a dict the module holds (filled in place during the forward)."""

    def __init__(self):
        super().__init__()
        self._grids: dict = {}

    def forward(self, x):
        k = x.shape[-1]
        if k not in self._grids:
            self._grids[k] = torch.linspace(0, 1, k, device=x.device)
        return x + self._grids[k]


class _WithGridCache(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.g, self.b = nn.Linear(8, 16), _GridCache(), nn.Linear(16, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)) + self.g(x)[:, :1])


def test_a_cache_filled_in_place_during_the_trace_is_emptied_again():
    x = torch.randn(5, 8)
    model = _WithGridCache().eval()
    gp.count_macs(model, (x,))
    assert model.g._grids == {}
    pruned, report = gp.prune(model, (x,), ratio=0.5, verify=True)
    assert report.oracle.verdict == "PASS" and pruned.a.out_features == 8
    assert all(t.device.type == "cpu" for t in pruned.g._grids.values())


class _Agg(nn.Module):
    def forward(self, h, index):
        return h.new_zeros(list(h.size())).scatter_add_(0, index.view(-1, 1).expand_as(h), h)


class _AggThenLiteral(nn.Module):
    """A PyG-style aggregation (its buffer sized from its input: it follows any plan), then a reshape at a
    literal width in the top module, which a plan cutting lin2 breaks."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin1, self.agg, self.lin2, self.head = nn.Linear(8, 16), _Agg(), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x, index):
        h = torch.relu(self.lin2(self.agg(torch.relu(self.lin1(x)), index)))
        z = h.reshape(-1, 16)
        return self.head(z)


def test_a_failing_literal_freezes_its_own_group_not_the_aggregations():
    """The pruned forward fails at the head (top module): the sizes that module's own code spells (the
    reshape) are kept whole; the aggregation's buffer, which follows the plan, is not blamed."""
    x, index = torch.randn(10, 8), torch.randint(0, 10, (10,))
    pruned, report = gp.prune(_AggThenLiteral().eval(), (x, index), ratio=0.5, verify=True)
    assert report.oracle.verdict == "PASS"
    assert pruned.lin1.out_features == 8 and pruned.lin2.out_features == 16
    assert any("node 'reshape'" in n and "planned again" in n for n in report.notes), report.notes


class _IndexPerFeature(_Between):
    """The scatter's index given as a model input with the feature dim already expanded."""

    def forward(self, x, index):
        h = self.lin(x)
        return self.out(torch.relu(torch.zeros_like(h).scatter_add_(0, index, h)))


def test_an_index_given_with_the_feature_dim_is_named_in_the_refusal():
    x, index = torch.randn(10, 8), torch.randint(0, 10, (10, 16))
    with pytest.raises(gp.PlanError) as err:
        gp.prune(_IndexPerFeature().eval(), (x, index), ratio=0.5)
    text = str(err.value)
    assert "meets a model input or output" in text and "model input 'index' dim 1" in text
    assert "expand it inside forward()" in text
