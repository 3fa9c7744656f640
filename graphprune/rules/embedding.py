"""Embedding lookups: the vocabulary is indexed by data, the feature dim is a channel."""
from __future__ import annotations

from ..ir import Node
from .registry import RuleContext, register


@register("aten.embedding", "aten.embedding_bag")
def _embedding(node: Node, ctx: RuleContext) -> None:
    w, idx, out = node.args[0].name, node.args[1].name, node.outputs[0]
    ctx.freeze(ctx.s(w, 0), f"rows looked up by index at {node.where()}")
    ctx.tie(ctx.s(w, 1), ctx.s(out, -1))
    ctx.tie_dims(idx, out, range(ctx.rank(idx)), range(ctx.rank(idx)))


@register("aten.index_select", "aten.gather")
def _index_select(node: Node, ctx: RuleContext) -> None:
    # out[..., i, ...] = x[..., idx[i], ...] along dim: positions move by data.
    x, out = node.args[0].name, node.outputs[0]
    dim = node.args[1] % ctx.rank(x)
    others = [d for d in range(ctx.rank(x)) if d != dim]
    if node.op == "aten.index_select":
        ctx.tie_dims(x, out, others, others)
    else:
        for name in (x, node.args[2].name):
            ctx.tie_dims(name, out, others, others)
    ctx.freeze(ctx.s(x, dim), f"dim indexed by data at {node.where()}")
    ctx.freeze(ctx.s(out, dim), f"dim indexed by data at {node.where()}")
