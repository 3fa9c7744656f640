"""Fourier transforms (torch.fft: a neural operator's spectral layers). A transform mixes the
positions along the dims it runs over, so those dims are frozen; every other dim (the channels)
passes through untouched. The transform is linear and acts on each channel alone, so a zeroed
channel gives a zero spectrum and back: exact under the oracle. (Complex views are shape rules;
real, imag, conj and angle are elementwise.)"""
from __future__ import annotations

from ..ir import Node
from .registry import RuleContext, register
from .reorder import move_positions

_ONE_DIM = ("fft_fft", "fft_ifft", "fft_rfft", "fft_irfft", "fft_hfft", "fft_ihfft")  # (x, n, dim=-1, norm)
_N_DIM = ("fft_fftn", "fft_ifftn", "fft_rfftn", "fft_irfftn", "fft_fft2", "fft_ifft2", "fft_rfft2",
          "fft_irfft2", "fft_hfftn", "fft_ihfftn", "fft_hfft2", "fft_ihfft2")  # (x, s, dim, norm)
_SHIFT = ("fft_fftshift", "fft_ifftshift")  # (x, dim=None)
_CORE = ("_fft_r2c", "_fft_c2r", "_fft_c2c")  # the decomposed forms: (x, dim, ...)


def _transformed(node: Node, ctx: RuleContext, rank: int) -> set[int]:
    op = node.op.split(".", 1)[1]
    if op in _ONE_DIM:
        dims = ctx.arg(node, 2, "dim", -1)
    elif op in _SHIFT or op in _CORE:
        dims = ctx.arg(node, 1, "dim", None)
    else:
        dims = ctx.arg(node, 2, "dim", None)
        if dims is None:
            sizes = ctx.arg(node, 1, "s", None)  # s given without dim: the last len(s) dims
            dims = list(range(-2, 0)) if op.endswith("2") else (
                list(range(-len(sizes), 0)) if sizes is not None else None)
    if dims is None:
        return set(range(rank))
    return {d % rank for d in ([dims] if isinstance(dims, int) else dims)}


@register(*(f"aten.{op}" for op in _ONE_DIM + _N_DIM + _SHIFT + _CORE))
def _fourier(node: Node, ctx: RuleContext) -> None:
    x, out = node.args[0].name, node.outputs[0]
    move_positions(ctx, x, out, _transformed(node, ctx, ctx.rank(x)), f"positions mixed by {node.op} at {node.where()}")

