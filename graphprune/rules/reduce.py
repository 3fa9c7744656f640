"""Reductions and softmax. Kept dims tie. A summed dim just disappears: zeroed
channels add nothing, so sum is exact. mean/var/max over a pruned dim, and
softmax along it, change with the channel count: prunable, but inexact."""
from __future__ import annotations

from ..ir import Node
from ..reasons import COMPUTED, INDEXED, REDUCED, SOFTMAX
from .registry import RuleContext, register

_EXACT = {"sum", "nansum"}


_DIM_AT = {"norm": 2, "linalg_vector_norm": 2}  # (x, ord, dim, keepdim); every other reduction: (x, dim, ...)
_POSITIONAL = {"argmax", "argmin", "max", "min"}  # return positions (max.dim/min.dim as their 2nd output)


def _reduce(node: Node, ctx: RuleContext, kind: str) -> None:
    tensors = ctx.tensor_args(node)
    if kind in ("max", "min") and len(tensors) == 2:  # torch.min(x, other) is min.other: elementwise (Apertus's xIELU)
        ctx.tie_broadcast(node.outputs[0], [t.name for t in tensors])
        return
    x = node.args[0].name
    rank = ctx.rank(x)
    dims = ctx.arg(node, _DIM_AT.get(kind, 1), "dim", None)
    if dims is not None and not isinstance(dims, (int, list, tuple)):
        dims = None  # a scalar ord in the dim position of an overload without dim
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        reduced = list(range(rank))
    else:
        reduced = sorted({d % rank for d in (dims if isinstance(dims, (list, tuple)) else [dims])})
    kept = [d for d in range(rank) if d not in reduced]
    for out in node.outputs:  # max.dim also returns indices
        keepdim = ctx.rank(out) == rank  # read off the result: keepdim's arg position varies
        ctx.tie_dims(x, out, kept, kept if keepdim else range(len(kept)))
    indices = node.outputs[1:2]  # max.dim's indices: read (a gather), or dropped (CBAM's x.max(dim=1)[0])
    read = [i for i in indices if i in ctx.graph.outputs or any(u.name not in ctx.dead for u in ctx.users(i))]
    if kind in ("argmax", "argmin") or (kind in _POSITIONAL and read):
        # indices into the reduced dim renumber when it is pruned: a later gather would
        # pick the wrong element, so the dim is frozen (as for ONNX ArgMax)
        for d in reduced:
            ctx.freeze(ctx.s(x, d), INDEXED, f"positions returned by {node.where()}")
    elif kind not in _EXACT:
        for d in reduced:
            ctx.inexact(ctx.s(x, d), REDUCED, f"reduced by {kind} at {node.where()}")


def _make(kind: str):
    return lambda node, ctx: _reduce(node, ctx, kind)


for _kind in ("sum", "nansum", "mean", "nanmean", "amax", "amin", "max", "min", "var", "std", "prod",
              "logsumexp", "norm", "linalg_vector_norm", "argmax", "argmin", "any", "all"):
    register(f"aten.{_kind}")(_make(_kind))


@register("aten.softmax", "aten._softmax", "aten.log_softmax", "aten._log_softmax", "aten.cumsum",
          "aten.cumprod", "aten._safe_softmax")
def _softmax(node: Node, ctx: RuleContext) -> None:
    x, out = node.args[0].name, node.outputs[0]
    ctx.tie_broadcast(out, [x])
    op = node.op.split(".")[-1].lstrip("_")
    if op != "cumsum":  # a zero adds nothing to a running sum
        kind = SOFTMAX if "softmax" in op else REDUCED  # cumprod: a running product
        ctx.inexact(ctx.s(x, node.args[1] % ctx.rank(x)), kind, f"{op} along this dim at {node.where()}")


_ONNX_EXACT = {"ReduceSum", "ReduceSumSquare"}


def _onnx_reduce(node: Node, ctx: RuleContext) -> None:
    x = node.args[0].name
    rank = ctx.rank(x)
    axes = node.kwargs.get("axes")
    if axes is None and len(node.args) > 1 and node.args[1] is not None:
        axes = ctx.graph.values[node.args[1].name].data
    if axes is None:
        if len(node.args) > 1 and node.args[1] is not None:  # computed axes: cannot tell what is reduced
            ctx.freeze_value(x, COMPUTED, f"reduction over computed axes at {node.where()}")
            ctx.freeze_value(node.outputs[0], COMPUTED, f"reduction over computed axes at {node.where()}")
            return
        axes = [] if node.kwargs.get("noop_with_empty_axes", 0) else list(range(rank))
    reduced = sorted({a % rank for a in axes})
    kept = [d for d in range(rank) if d not in reduced]
    out = node.outputs[0]
    keepdims = ctx.rank(out) == rank
    ctx.tie_dims(x, out, kept, kept if keepdims else range(len(kept)))
    kind = node.op.split(".")[-1]
    if kind not in _ONNX_EXACT:
        for d in reduced:
            ctx.inexact(ctx.s(x, d), REDUCED, f"reduced by {kind} at {node.where()}")


for _kind in ("ReduceSum", "ReduceSumSquare", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
              "ReduceL2", "ReduceLogSum", "ReduceLogSumExp"):
    register(f"onnx.{_kind}")(_onnx_reduce)


@register("onnx.ArgMax", "onnx.ArgMin")
def _onnx_arg(node: Node, ctx: RuleContext) -> None:
    x, out = node.args[0].name, node.outputs[0]
    rank = ctx.rank(x)
    axis = node.kwargs.get("axis", 0) % rank
    kept = [d for d in range(rank) if d != axis]
    ctx.tie_dims(x, out, kept, kept if ctx.rank(out) == rank else range(len(kept)))
    ctx.freeze(ctx.s(x, axis), INDEXED, f"positions returned by {node.where()}")


@register("onnx.Softmax", "onnx.LogSoftmax", "onnx.Hardmax", "onnx.CumSum")
def _onnx_softmax(node: Node, ctx: RuleContext) -> None:
    x, out = node.args[0].name, node.outputs[0]
    ctx.tie_broadcast(out, [x])
    kind = node.op.split(".")[-1]
    if kind == "CumSum":
        return  # a zero adds nothing to a running sum
    ctx.inexact(ctx.s(x, node.kwargs.get("axis", -1) % ctx.rank(x)), SOFTMAX,
                f"{kind} along this dim at {node.where()}")
