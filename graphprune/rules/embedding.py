"""Embedding lookups: the vocabulary is indexed by data, the feature dim is a channel."""
from __future__ import annotations

from ..ir import Node, Ref
from ..reasons import INDEXED
from .registry import RuleContext, register


@register("aten.embedding", "aten.embedding_bag")
def _embedding(node: Node, ctx: RuleContext) -> None:
    w, idx, out = node.args[0].name, node.args[1].name, node.outputs[0]
    ctx.freeze(ctx.s(w, 0), INDEXED, f"rows looked up by index at {node.where()}")
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
        index = node.args[2] if len(node.args) > 2 else node.kwargs.get("index")
        if isinstance(index, Ref) and ctx.rank(index) == 1:  # one index per output position (CondenseNet's buffer)
            ctx.tie(ctx.s(index, 0), ctx.s(out, dim))
    else:
        for name in (x, node.args[2].name):
            ctx.tie_dims(name, out, others, others)
    ctx.freeze(ctx.s(x, dim), INDEXED, f"dim indexed by data at {node.where()}")
    ctx.freeze(ctx.s(out, dim), INDEXED, f"dim indexed by data at {node.where()}")


@register("aten.index", "aten._unsafe_index")
def _index(node: Node, ctx: RuleContext) -> None:
    # x[idx] / x[:, idx]: the indexed dims are looked up by data (a relative-position table,
    # a token gather); the dims no index touches pass through as they are.
    # A boolean mask of rank k indexes k dims at once and gives one (its true positions: x[mask]).
    x, out = node.args[0].name, node.outputs[0]
    rank = ctx.rank(x)
    at: list[int] = []
    ranks: list[int] = []
    pos = 0
    for i in node.args[1]:
        mask = i is not None and ctx.graph.values[i.name].dtype in ("bool", "uint8")
        width = ctx.rank(i) if mask else 1
        if i is not None:
            at.extend(range(pos, pos + width))
            ranks.append(1 if mask else ctx.rank(i))
        pos += width
    idx_rank = max(ranks, default=0)
    rest = [d for d in range(rank) if d not in at]
    consecutive = at == list(range(at[0], at[-1] + 1)) if at else True
    if consecutive and at:
        first = at[0]
        out_dims = [d if d < first else d - len(at) + idx_rank for d in rest]
        idx_dims = range(first, first + idx_rank)
    else:  # non-adjacent indexed dims: numpy puts the indexed result first
        out_dims = [idx_rank + k for k in range(len(rest))]
        idx_dims = range(idx_rank)
    ctx.tie_dims(x, out, rest, out_dims)
    for d in at:
        ctx.freeze(ctx.s(x, d), INDEXED, f"dim indexed by data at {node.where()}")
    for d in idx_dims:
        ctx.freeze(ctx.s(out, d), INDEXED, f"dim indexed by data at {node.where()}")
