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


def _selection(node: Node, ctx: RuleContext) -> tuple[list[int], list[int], list[int], range, int]:
    """Where ``x[indices]`` takes its dims: (x's indexed dims, x's other dims, where those land in the
    selection, the selection's dims made by the indices, the selection's rank). A boolean mask of rank k indexes
    k dims at once and gives one (its true positions: ``x[mask]``)."""
    rank = ctx.rank(node.args[0])
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
    if at and at == list(range(at[0], at[-1] + 1)):
        first = at[0]
        return at, rest, [d if d < first else d - len(at) + idx_rank for d in rest], range(first, first + idx_rank), \
            len(rest) + idx_rank
    # non-adjacent indexed dims: numpy puts the indexed result first
    return at, rest, [idx_rank + k for k in range(len(rest))], range(idx_rank), len(rest) + idx_rank


@register("aten.index", "aten._unsafe_index")
def _index(node: Node, ctx: RuleContext) -> None:
    # x[idx] / x[:, idx]: the indexed dims are looked up by data (a relative-position table,
    # a token gather); the dims no index touches pass through as they are.
    x, out = node.args[0].name, node.outputs[0]
    at, rest, out_dims, idx_dims, _ = _selection(node, ctx)
    ctx.tie_dims(x, out, rest, out_dims)
    for d in at:
        ctx.freeze(ctx.s(x, d), INDEXED, f"dim indexed by data at {node.where()}")
    for d in idx_dims:
        ctx.freeze(ctx.s(out, d), INDEXED, f"dim indexed by data at {node.where()}")


@register("aten.index_put", "aten.index_put_", "aten._unsafe_index_put")
def _index_put(node: Node, ctx: RuleContext) -> None:
    # x[idx] = v / x[mask] += v (SAM's prompt embeddings): the result is x where data says, v broadcast to
    # the selection elsewhere, so x's untouched dims are v's trailing ones; the indexed dims move by data.
    x, out, values = node.args[0].name, node.outputs[0], node.args[2]
    at, rest, sel_dims, _, sel_rank = _selection(node, ctx)
    ctx.tie_dims(x, out, range(ctx.rank(x)), range(ctx.rank(x)))
    if isinstance(values, Ref):
        shift = sel_rank - ctx.rank(values)
        for d, p in zip(rest, sel_dims):
            if p - shift >= 0 and ctx.shape(values)[p - shift] == ctx.shape(x)[d]:
                ctx.tie(ctx.s(x, d), ctx.s(values, p - shift))
    for d in at:
        ctx.freeze(ctx.s(x, d), INDEXED, f"dim written at positions data choose at {node.where()}")
