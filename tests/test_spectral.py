"""Fourier transforms carry the channels they do not transform (rules/spectral.py): a neural
operator's spectral layers prune, in plain torch (neuraloperator's FNO in small)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import graphprune as gp


class _SpectralConv(nn.Module):
    """FNO's spectral convolution: the lowest modes of the 2-D spectrum mixed by a complex weight."""

    def __init__(self, c_in: int, c_out: int, modes: int = 4, shift: bool = False):
        super().__init__()
        self.modes, self.shift = modes, shift
        self.weight = nn.Parameter(torch.randn(c_in, c_out, modes, modes, dtype=torch.cfloat) / c_in)

    def forward(self, x):
        b, _, h, w = x.shape
        spec = torch.fft.rfft2(x, norm="forward")
        if self.shift:  # neuraloperator centres the modes before slicing
            spec = torch.fft.fftshift(spec, dim=-2)
        m = self.modes
        out = torch.zeros(b, self.weight.shape[1], h, w // 2 + 1, dtype=spec.dtype, device=x.device)
        out[:, :, :m, :m] = torch.einsum("bixy,ioxy->boxy", spec[:, :, :m, :m], self.weight)
        if self.shift:
            out = torch.fft.ifftshift(out, dim=-2)
        return torch.fft.irfft2(out, s=(h, w), norm="forward")


class _FNO(nn.Module):
    def __init__(self, shift: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.lift, self.proj = nn.Conv2d(3, 16, 1), nn.Conv2d(16, 2, 1)
        self.spec = nn.ModuleList(_SpectralConv(16, 16, shift=shift) for _ in range(2))
        self.skip = nn.ModuleList(nn.Conv2d(16, 16, 1) for _ in range(2))
        self.mlp = nn.Sequential(nn.Conv2d(16, 32, 1), nn.GELU(), nn.Conv2d(32, 16, 1))

    def forward(self, x):
        h = self.lift(x)
        for spec, skip in zip(self.spec, self.skip):
            h = torch.nn.functional.gelu(spec(h) + skip(h))
        return self.proj(h + self.mlp(h))


@pytest.mark.parametrize("shift", [False, True], ids=["plain", "fftshift"])
def test_spectral_layers_prune_exactly(shift):
    x = torch.randn(1, 3, 16, 16)
    model = _FNO(shift).eval()
    pruned, report = gp.prune(model, (x,), ratio=0.5, round_to=1, runtime=None, verify=True)
    assert report.oracle.verdict == "PASS", report.oracle
    # the residual stream runs through both spectral weights: their in and out channels both halve
    assert [tuple(s.weight.shape[:2]) for s in pruned.spec] == [(8, 8), (8, 8)]
    assert pruned.spec[0].weight.dtype == torch.cfloat
    assert pruned(torch.randn(2, 3, 24, 20)).shape == (2, 2, 24, 20)  # another resolution and batch
    assert "no coupling rule" not in str(report)


class _TransformedChannels(nn.Module):
    """An FFT over the channel dim (dim=1) and one over every dim: their channels are positions."""

    def __init__(self, dims):
        super().__init__()
        torch.manual_seed(0)
        self.dims = dims
        self.a, self.b = nn.Conv1d(2, 8, 1), nn.Conv1d(8, 2, 1)

    def forward(self, x):
        h = self.a(x)
        h = torch.fft.ifftn(torch.fft.fftn(h, dim=self.dims), dim=self.dims).real
        return self.b(h)


@pytest.mark.parametrize("dims", [(1,), None], ids=["channels", "every-dim"])
def test_a_transform_over_the_channels_freezes_them(dims):
    graph = gp.trace(_TransformedChannels(dims).eval(), (torch.randn(1, 2, 16),))
    group = graph.group_of("a.weight", 0)
    assert not group.prunable and any("positions mixed by aten.fft_fftn" in str(r) for r in group.frozen)


class _GridCache(nn.Module):
    """neuraloperator's grid embedding: a grid cached in a plain attribute on the first real run. The model
    was traced on meta stand-ins before any run; its latency was then timed, which filled the cache with a
    real tensor, and the rewrite's re-trace on meta stand-ins met it and failed (the spectral groups were
    then kept whole with "could not record")."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fno = _FNO()
        self._grid = None

    def forward(self, x):
        if self._grid is None or self._grid.shape[-1] != x.shape[-1]:
            self._grid = torch.linspace(0, 1, x.shape[-1], device=x.device)
        return self.fno(x + self._grid)


def test_a_retrace_after_a_real_run_filled_a_cache():
    """The default call times the model (PyTorch eager) between the trace and the rewrite's re-trace."""
    x = torch.randn(1, 3, 16, 16)
    pruned, report = gp.prune(_GridCache().eval(), (x,), ratio=0.5, round_to=1, verify=True)
    assert report.oracle.verdict == "PASS"
    assert tuple(pruned.fno.spec[0].weight.shape[:2]) == (8, 8)
    assert not any("planned again" in n for n in report.notes), report.notes


class _Padded(nn.Module):
    """FNO's spectrum buffer in real numbers: zeros written through two slices (slice, slice, copy_)."""

    def __init__(self, like: bool):
        super().__init__()
        torch.manual_seed(0)
        self.like, self.a, self.b = like, nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = self.a(x)
        out = torch.zeros_like(h) if self.like else torch.zeros(h.shape)
        out[:, :, :4, :4] = h[:, :, :4, :4]
        return self.b(out)


@pytest.mark.parametrize("like", [False, True], ids=["zeros", "zeros_like"])
def test_a_real_buffer_written_through_slices_is_held_to_the_oracle(like):
    """The oracle's masked run masked the first slice with a copy, which took the write: a right plan FAILed."""
    x = torch.randn(1, 3, 8, 8)
    pruned, report = gp.prune(_Padded(like).eval(), (x,), ratio=0.5, round_to=1, runtime=None, verify=True)
    assert report.oracle.verdict == "PASS" and pruned.a.out_channels == 4 and pruned.b.in_channels == 4


class _Factorized(nn.Module):
    """TFNO's factorized weights in small: a (c_in, c_out) mixing weight rebuilt by tensordot from a low-rank
    pair, then contracted with the features by tensordot."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Conv1d(2, 16, 1), nn.Conv1d(16, 3, 1)
        self.u, self.v = nn.Parameter(torch.randn(16, 4) / 4), nn.Parameter(torch.randn(4, 16) / 4)

    def forward(self, x):
        w = torch.tensordot(self.u, self.v, dims=([1], [0]))  # (c_in, c_out)
        h = torch.tensordot(self.a(x), w, dims=([1], [0])).transpose(1, 2)  # (b, l, c_out) -> (b, c_out, l)
        return self.b(torch.relu(h))


def test_tensordot_carries_its_free_dims_and_pairs_its_contracted_ones():
    """Before: no rule for aten.tensordot, so TFNO's spectral weights were frozen."""
    x = torch.randn(2, 2, 12)
    graph = gp.trace(_Factorized().eval(), (x,))
    assert graph.group_of("u", 0) is graph.group_of("a.weight", 0)  # contracted with a's channels
    assert graph.group_of("v", 1) is graph.group_of("b.weight", 1)  # free dim: the output's channels
    pruned, report = gp.prune(_Factorized().eval(), (x,), ratio=0.5, round_to=1, runtime=None, verify=True)
    assert report.oracle.verdict == "PASS", report.oracle
    assert pruned.u.shape == (8, 4) and pruned.v.shape == (4, 8)
    assert pruned(torch.randn(3, 2, 20)).shape == (3, 3, 20)
