"""Normalisations. Per-channel ones (batch/instance norm, group norm across whole
groups) are exact under the oracle; those that normalise over a channel dim
(layer/RMS norm, channels within a group) are prunable but marked inexact, and so are
the positions instance and group norm (batch norm in training) take statistics over."""
from __future__ import annotations

from ..ir import Node
from ..reasons import NORMALISED
from .registry import RuleContext, register


def _per_channel(ctx: RuleContext, node: Node, x: str, out: str, stats: list, own_stats: str = "") -> None:
    """``own_stats``: "" (running statistics), "instance" (each item's positions) or "batch" (the batch's)."""
    ctx.tie_broadcast(out, [x])
    c = 1 if ctx.rank(x) > 1 else 0
    for p in stats:
        if p is not None:
            ctx.tie(ctx.s(p, 0), ctx.s(x, c))
    if own_stats:
        _positions(ctx, node, x, batch=own_stats == "batch")


def _positions(ctx: RuleContext, node: Node, x: str, batch: bool = False) -> None:
    """Statistics taken over the positions (instance and group norm, batch norm in training, which takes them
    over the batch dim too: a (b * tokens, channels) view): a position a 1-wide convolution lets through, or
    a token a reshape moved into the batch dim, is normalised over, so cutting it is inexact."""
    for d in ([0] if batch else []) + list(range(2, ctx.rank(x))):
        ctx.inexact(ctx.s(x, d), NORMALISED, f"positions normalised over by {node.op.split('.')[-1]} at {node.where()}")


@register("aten.batch_norm", "aten.instance_norm")
def _batch_norm(node: Node, ctx: RuleContext) -> None:
    # batch_norm(x, w, b, mean, var, training, ...); instance_norm(x, w, b, mean, var, use_input_stats, ...)
    instance = node.op == "aten.instance_norm"
    own = ("instance" if instance else "batch") if ctx.arg(node, 5, "training", instance) else ""
    _per_channel(ctx, node, node.args[0].name, node.outputs[0], list(node.args[1:5]), own)


@register("aten._native_batch_norm_legit_no_training", "aten._native_batch_norm_legit",
          "aten.native_batch_norm", "aten._native_batch_norm_legit_functional")
def _native_batch_norm(node: Node, ctx: RuleContext) -> None:
    # (x, w, b, running_mean, running_var, training, ...), or without the running stats (x, w, b, training, ...)
    flag = node.args[5] if len(node.args) > 5 and not isinstance(node.args[3], bool) else (
        node.args[3] if len(node.args) > 3 and isinstance(node.args[3], bool) else False)
    training = node.op != "aten._native_batch_norm_legit_no_training" and bool(flag)
    _per_channel(ctx, node, node.args[0].name, node.outputs[0], list(node.args[1:5]), "batch" if training else "")
    for extra in node.outputs[1:]:  # saved mean / rstd are per channel
        if ctx.rank(extra) == 1:
            ctx.tie(ctx.s(extra, 0), ctx.s(node.args[0], 1))


def _last_dims_norm(ctx: RuleContext, node: Node, x: str, out: str, normalized: list, params: list,
                    kind: str) -> None:
    ctx.tie_broadcast(out, [x])
    k = len(normalized)
    rank = ctx.rank(x)
    for i in range(k):
        d = rank - k + i
        ctx.inexact(ctx.s(x, d), NORMALISED, f"normalised by {kind} at {node.where()}")
        ctx.carry(ctx.s(x, d), (1, i), normalized[i])
        for p in params:
            if p is not None:
                ctx.tie(ctx.s(p, i), ctx.s(x, d))


@register("aten.layer_norm", "aten.native_layer_norm")
def _layer_norm(node: Node, ctx: RuleContext) -> None:
    params = [ctx.arg(node, 2, "weight"), ctx.arg(node, 3, "bias")]
    _last_dims_norm(ctx, node, node.args[0].name, node.outputs[0], list(node.args[1]), params, "layer_norm")


@register("aten.rms_norm")
def _rms_norm(node: Node, ctx: RuleContext) -> None:
    params = [ctx.arg(node, 2, "weight")]
    _last_dims_norm(ctx, node, node.args[0].name, node.outputs[0], list(node.args[1]), params, "rms_norm")


@register("aten.group_norm")
def _group_norm(node: Node, ctx: RuleContext) -> None:
    x, out = node.args[0].name, node.outputs[0]
    groups = node.args[1]
    ctx.tie_broadcast(out, [x])
    _positions(ctx, node, x)
    for p in (ctx.arg(node, 2, "weight"), ctx.arg(node, 3, "bias")):
        if p is not None:
            ctx.tie(ctx.s(p, 0), ctx.s(x, 1))
    if groups > 1:
        g = ctx.virtual(groups, "norm_groups")
        per = ctx.virtual(ctx.shape(x)[1] // groups, "channels_per_group")
        ctx.factor(ctx.s(x, 1), [g, per], _straddle(groups, ctx.shape(x)[1]))
        ctx.carry(g, (1,), groups)
        ctx.inexact(per, NORMALISED, f"normalised within groups by group_norm at {node.where()}")
    else:
        ctx.inexact(ctx.s(x, 1), NORMALISED, f"normalised by group_norm at {node.where()}")


@register("onnx.BatchNormalization", "onnx.InstanceNormalization")
def _onnx_per_channel(node: Node, ctx: RuleContext) -> None:
    own = "instance" if node.op == "onnx.InstanceNormalization" else ("batch" if node.kwargs.get("training_mode", 0) else "")
    _per_channel(ctx, node, node.args[0].name, node.outputs[0], list(node.args[1:5]), own)


@register("onnx.LayerNormalization")
def _onnx_layer_norm(node: Node, ctx: RuleContext) -> None:
    x = node.args[0].name
    rank = ctx.rank(x)
    axis = node.kwargs.get("axis", -1) % rank
    ctx.tie_broadcast(node.outputs[0], [x])
    for d in range(axis, rank):
        ctx.inexact(ctx.s(x, d), NORMALISED, f"normalised by LayerNormalization at {node.where()}")
    for p in node.args[1:3]:
        if p is not None:
            ctx.tie_broadcast(x, [p.name])


@register("onnx.GroupNormalization")
def _onnx_group_norm(node: Node, ctx: RuleContext) -> None:
    x, out = node.args[0].name, node.outputs[0]
    groups = node.kwargs["num_groups"]
    c = ctx.shape(x)[1]
    ctx.tie_broadcast(out, [x])
    _positions(ctx, node, x)
    g = ctx.virtual(groups, "norm_groups") if groups > 1 else None
    per = ctx.virtual(c // groups, "channels_per_group") if g is not None else ctx.s(x, 1)
    if g is not None:
        ctx.factor(ctx.s(x, 1), [g, per], _straddle(groups, c))
        ctx.carry(g, ("num_groups",), groups)
    for p in node.args[1:3]:
        if p is None:
            continue
        if ctx.shape(p)[0] == c:  # opset 21: per channel
            ctx.tie(ctx.s(p, 0), ctx.s(x, 1))
        elif g is not None:  # opset 18: per group
            ctx.tie(ctx.s(p, 0), g)
    ctx.inexact(per, NORMALISED, f"normalised within groups by GroupNormalization at {node.where()}")


def _straddle(groups: int, channels: int) -> str:
    """What a group norm's factoring means, for the freeze where it cannot line up (a UNet's skip
    concatenation of 64 + 32 channels under 8 groups of 12)."""
    return (f"whose {groups} groups of {channels // groups} channels cut across how the channels are split or "
            "grouped elsewhere (a concatenation, or another norm's groups)")
