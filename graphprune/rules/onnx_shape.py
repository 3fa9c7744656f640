"""ONNX shape ops. Same relations as the aten shape family (rules/shape.py), but
sizes arrive as integer input tensors (evaluated by the front-end into
``Value.data``), and only the data inputs take part in coupling: a Reshape's
target vector or an Expand's shape vector is an argument, not a tensor whose
dims couple to anything."""
from __future__ import annotations

from ..ir import Node
from ..reasons import COMPUTED, INDEXED, LAYOUT, POSITIONAL, SYMBOLIC
from .recurrent import zero_state
from .registry import RuleContext, register
from .shape import relate_reshape, window


def _data(ctx: RuleContext, node: Node, i: int):
    if len(node.args) <= i or node.args[i] is None:
        return None
    return ctx.graph.values[node.args[i].name].data


def _carry_vector(ctx: RuleContext, node: Node, out: str, i: int) -> None:
    vec = _data(ctx, node, i)
    if vec is None:
        return
    rank = ctx.rank(out)
    for k, size in enumerate(vec[-rank:] if len(vec) > rank else vec):
        k_out = k + max(0, rank - len(vec))
        if size > 1 and ctx.shape(out)[k_out] == size:
            ctx.carry(ctx.s(out, k_out), (i, k + max(0, len(vec) - rank)), size)


@register("onnx.Reshape")
def _reshape(node: Node, ctx: RuleContext) -> None:
    relate_reshape(ctx, node.args[0].name, node.outputs[0])
    _carry_vector(ctx, node, node.outputs[0], 1)


@register("onnx.Flatten", "onnx.Squeeze", "onnx.Unsqueeze")
def _flatten(node: Node, ctx: RuleContext) -> None:
    relate_reshape(ctx, node.args[0].name, node.outputs[0])


@register("onnx.Transpose")
def _transpose(node: Node, ctx: RuleContext) -> None:
    src, out = node.args[0].name, node.outputs[0]
    perm = node.kwargs.get("perm") or list(reversed(range(ctx.rank(src))))
    for o, i in enumerate(perm):
        ctx.tie(ctx.s(src, i), ctx.s(out, o))


@register("onnx.Concat")
def _concat(node: Node, ctx: RuleContext) -> None:
    out = node.outputs[0]
    rank = ctx.rank(out)
    axis = node.kwargs.get("axis", 0) % rank
    parts = [r.name for r in node.args if r is not None and ctx.shape(r)[axis] != 0]
    ctx.concat(ctx.s(out, axis), [ctx.s(p, axis) for p in parts])
    others = [d for d in range(rank) if d != axis]
    for p in parts:
        ctx.tie_dims(p, out, others, others)


@register("onnx.Split")
def _split(node: Node, ctx: RuleContext) -> None:
    src = node.args[0].name
    rank = ctx.rank(src)
    axis = node.kwargs.get("axis", 0) % rank
    outs = node.outputs
    ctx.concat(ctx.s(src, axis), [ctx.s(o, axis) for o in outs])
    others = [d for d in range(rank) if d != axis]
    for o in outs:
        ctx.tie_dims(src, o, others, others)
    sizes = _data(ctx, node, 1)
    if sizes is not None:
        for k, o in enumerate(outs):
            ctx.carry(ctx.s(o, axis), (1, k), sizes[k])
    elif "split" in node.kwargs:  # opset < 13: sizes as an attribute
        for k, o in enumerate(outs):
            ctx.carry(ctx.s(o, axis), ("split", k), node.kwargs["split"][k])
    else:  # equal parts from num_outputs: they must shrink alike
        for o in outs[1:]:
            if ctx.shape(o)[axis] == ctx.shape(outs[0])[axis]:
                ctx.tie(ctx.s(outs[0], axis), ctx.s(o, axis))
            else:
                ctx.freeze(ctx.s(src, axis), LAYOUT, f"uneven equal split at {ctx.where()}")


@register("onnx.Slice")
def _slice(node: Node, ctx: RuleContext) -> None:
    src, out = node.args[0].name, node.outputs[0]
    rank = ctx.rank(src)
    starts, ends = _data(ctx, node, 1), _data(ctx, node, 2)
    axes = _data(ctx, node, 3) or (list(range(len(starts))) if starts else None)
    steps = _data(ctx, node, 4) or [1] * (len(axes) if axes else 0)
    if starts is None or ends is None or axes is None:
        for d in range(rank):
            if ctx.shape(src)[d] == ctx.shape(out)[d]:
                ctx.tie(ctx.s(src, d), ctx.s(out, d))
            else:
                ctx.freeze(ctx.s(src, d), COMPUTED, f"slice with computed bounds at {ctx.where()}")
                ctx.freeze(ctx.s(out, d), COMPUTED, f"slice with computed bounds at {ctx.where()}")
        return
    sliced = {a % rank: j for j, a in enumerate(axes)}
    for d in range(rank):
        if d not in sliced:
            ctx.tie(ctx.s(src, d), ctx.s(out, d))
            continue
        j = sliced[d]
        n = ctx.shape(src)[d]
        if not isinstance(n, int) or steps[j] != 1:
            kind = SYMBOLIC if not isinstance(n, int) else LAYOUT
            ctx.freeze(ctx.s(src, d), kind, f"strided or symbolic slice at {ctx.where()}")
            ctx.freeze(ctx.s(out, d), kind, f"strided or symbolic slice at {ctx.where()}")
            continue
        start, stop = starts[j], ends[j]
        start, stop = (start + n if start < 0 else start), (stop + n if stop < 0 else stop)
        start, stop = max(0, min(start, n)), max(0, min(stop, n))
        if stop - start == 1 and n > 1:
            # One index picked out (how exporters lower unbind/select): like aten.select,
            # the picked-from dim is an index space, not channels.
            ctx.freeze(ctx.s(src, d), INDEXED, f"dim indexed by a width-1 Slice at {ctx.where()}")
            continue
        window(ctx, src, out, d, start, stop, (1, j), (2, j), starts[j], ends[j])


@register("onnx.Expand")
def _expand(node: Node, ctx: RuleContext) -> None:
    ctx.tie_broadcast(node.outputs[0], [node.args[0].name])
    _carry_vector(ctx, node, node.outputs[0], 1)


@register("onnx.Tile")
def _tile(node: Node, ctx: RuleContext) -> None:
    src, out = node.args[0].name, node.outputs[0]
    reps = _data(ctx, node, 1)
    for d in range(ctx.rank(src)):
        if reps is not None and reps[d] == 1:
            ctx.tie(ctx.s(src, d), ctx.s(out, d))
        elif reps is not None:
            copies = ctx.virtual(reps[d], "tile")
            ctx.freeze(copies, LAYOUT, f"tile count at {ctx.where()}")
            ctx.factor(ctx.s(out, d), [copies, ctx.s(src, d)])
        else:
            ctx.freeze(ctx.s(src, d), COMPUTED, f"tile with computed repeats at {ctx.where()}")
            ctx.freeze(ctx.s(out, d), COMPUTED, f"tile with computed repeats at {ctx.where()}")


@register("onnx.Shape", "onnx.Size", "onnx.Constant")
def _no_coupling(node: Node, ctx: RuleContext) -> None:
    """Sizes are read, not indexed: the output holds numbers, not channels."""


@register("onnx.ConstantOfShape", "onnx.Range", "onnx.RandomNormal", "onnx.RandomUniform", "onnx.EyeLike",
          "onnx.RandomNormalLike", "onnx.RandomUniformLike")
def _factory(node: Node, ctx: RuleContext) -> None:
    if node.op == "onnx.ConstantOfShape" and zero_state(ctx, node.outputs[0]) \
            and not any(node.kwargs.get("value") or [0]):
        _carry_vector(ctx, node, node.outputs[0], 0)  # a recurrent layer's zero initial state
        return
    for out in node.outputs:
        ctx.freeze_value(out, COMPUTED, f"size set by the arguments of {ctx.where()}")


@register("onnx.Gather")
def _gather(node: Node, ctx: RuleContext) -> None:
    # out = data[:axis] + indices.shape + data[axis+1:]; the gathered axis moves by data.
    data, idx, out = node.args[0].name, node.args[1].name, node.outputs[0]
    rank = ctx.rank(data)
    axis = node.kwargs.get("axis", 0) % rank
    k = ctx.rank(idx)
    ctx.freeze(ctx.s(data, axis), INDEXED, f"dim indexed by Gather at {ctx.where()}")
    ctx.tie_dims(data, out, range(axis), range(axis))
    ctx.tie_dims(data, out, range(axis + 1, rank), range(axis + k, rank - 1 + k))
    if ctx.graph.values[idx].kind == "act" or k:
        ctx.tie_dims(idx, out, range(k), range(axis, axis + k))


@register("onnx.Trilu")
def _trilu(node: Node, ctx: RuleContext) -> None:
    x, out = node.args[0].name, node.outputs[0]
    ctx.tie_broadcast(out, [x])
    for d in (-2, -1):
        ctx.freeze(ctx.s(x, d), POSITIONAL, f"positional mask at {ctx.where()}")

