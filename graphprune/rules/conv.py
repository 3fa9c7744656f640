"""Convolutions, plain, grouped, depthwise and transposed.

With g groups the channel dim is a product (group, channel-in-group): the group
space is shared by input, weight and output, so pruning a group removes a whole
group everywhere, and pruning a channel-in-group removes it from every group.
Spatial dims are positions, not channels; the kernel window is no channel at all.
"""
from __future__ import annotations

from ..ir import Node
from ..ops import Ops, aten
from ..reasons import SPATIAL
from .registry import RuleContext, register


def _per_dim(v, n: int) -> list:
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return v * n if len(v) == 1 else v


def pointwise(ctx: RuleContext, w: str, stride, padding) -> set[int]:
    """The spatial dims (0-based) a 1-wide kernel reads at stride 1 and no padding: each position alone, so
    they pass through, as a linear's leading dims do (MLP-Mixer's token mixing is a Conv1d whose "positions"
    are the hidden size). ``padding`` a string ("same", "valid") is none at a 1-wide kernel."""
    n = ctx.rank(w) - 2
    strides, pads = _per_dim(stride, n), [0] * n if isinstance(padding, str) else _per_dim(padding, n)
    return {k for k in range(n) if ctx.shape(w)[2 + k] == 1 and strides[k] == 1 and pads[k] == 0}


def relate_conv(ctx: RuleContext, node: Node, x: str, w: str, b, out: str, groups: int, transposed: bool,
                groups_path: tuple, passes: set[int] = frozenset()) -> None:
    """``passes``: spatial dims whose positions pass through (:func:`pointwise`); the others are frozen."""
    nsp = ctx.rank(w) - 2
    batched = ctx.rank(x) == nsp + 2
    c = 1 if batched else 0
    if batched:
        ctx.tie(ctx.s(x, 0), ctx.s(out, 0))
    for k in range(nsp):
        ctx.hide(ctx.s(w, 2 + k), f"kernel window of {node.where()}")
        if k in passes:
            ctx.tie(ctx.s(x, c + 1 + k), ctx.s(out, c + 1 + k))
            continue
        reason = f"spatial positions at {node.where()}"
        ctx.freeze(ctx.s(x, c + 1 + k), SPATIAL, reason)
        ctx.freeze(ctx.s(out, c + 1 + k), SPATIAL, reason)
    # w_in / w_out: the weight dims facing the input and the output channels.
    w_in, w_out = (0, 1) if transposed else (1, 0)
    if groups == 1:
        ctx.tie(ctx.s(x, c), ctx.s(w, w_in))
        ctx.tie(ctx.s(w, w_out), ctx.s(out, c))
    else:
        g = ctx.virtual(groups, "conv_groups")
        ctx.carry(g, groups_path, groups)
        if transposed:
            ctx.tie(ctx.s(x, c), ctx.s(w, 0))
            ctx.factor(ctx.s(x, c), [g, ctx.virtual(ctx.shape(w)[0] // groups, "in_per_group")])
            ctx.factor(ctx.s(out, c), [g, ctx.s(w, 1)])
        else:
            ctx.factor(ctx.s(x, c), [g, ctx.s(w, 1)])
            ctx.factor(ctx.s(w, 0), [g, ctx.virtual(ctx.shape(w)[0] // groups, "out_per_group")])
            ctx.tie(ctx.s(w, 0), ctx.s(out, c))
    if b is not None:
        ctx.tie(ctx.s(b, 0), ctx.s(out, c))


@register(*aten(Ops.Conv))
def _conv(node: Node, ctx: RuleContext) -> None:
    groups = ctx.arg(node, 6, "groups", 1)
    relate_conv(ctx, node, node.args[0].name, node.args[1].name, ctx.arg(node, 2, "bias"), node.outputs[0],
                groups, False, (6,), pointwise(ctx, node.args[1].name, ctx.arg(node, 3, "stride", 1),
                                               ctx.arg(node, 4, "padding", 0)))


@register("aten.conv_transpose1d", "aten.conv_transpose2d", "aten.conv_transpose3d")
def _conv_transpose(node: Node, ctx: RuleContext) -> None:
    groups = ctx.arg(node, 6, "groups", 1)
    plain = not any(_per_dim(ctx.arg(node, 5, "output_padding", 0), 1))  # an output padding adds positions
    relate_conv(ctx, node, node.args[0].name, node.args[1].name, ctx.arg(node, 2, "bias"), node.outputs[0],
                groups, True, (6,), pointwise(ctx, node.args[1].name, ctx.arg(node, 3, "stride", 1),
                                              ctx.arg(node, 4, "padding", 0)) if plain else set())


@register("aten.convolution", "aten._convolution")
def _convolution(node: Node, ctx: RuleContext) -> None:
    transposed = bool(node.args[6])
    groups = node.args[8]
    plain = not transposed or not any(_per_dim(node.args[7], 1))  # an output padding adds positions
    relate_conv(ctx, node, node.args[0].name, node.args[1].name, node.args[2], node.outputs[0],
                groups, transposed, (8,), pointwise(ctx, node.args[1].name, node.args[3], node.args[4]) if plain else set())


@register("onnx.Conv", "onnx.ConvTranspose")
def _onnx_conv(node: Node, ctx: RuleContext) -> None:
    bias = node.args[2] if len(node.args) > 2 else None
    n = ctx.rank(node.args[1].name) - 2
    pads = node.kwargs.get("pads") or [0] * 2 * n  # (begins..., ends...)
    plain = not any(node.kwargs.get("output_padding") or ()) and "output_shape" not in node.kwargs
    relate_conv(ctx, node, node.args[0].name, node.args[1].name, bias, node.outputs[0],
                node.kwargs.get("group", 1), node.op == "onnx.ConvTranspose", ("group",),
                pointwise(ctx, node.args[1].name, node.kwargs.get("strides", 1), [pads[k] + pads[k + n] for k in range(n)])
                if plain else set())
