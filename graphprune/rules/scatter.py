"""Scatters: values summed (or reduced) into positions along one dim by an index (message passing).

``out = self.scatter_add(dim, index, src)`` writes ``src[..., i, ...]`` into ``out[..., index[i], ...]``
along ``dim``; every other dim is elementwise: channel c of ``out`` reads channel c of ``self`` and of
``src`` only. That is how a graph network aggregates messages into nodes (torch_geometric's sum, mean
and max aggregations: ``scatter_add_`` / ``scatter_reduce_`` along the node dim, the index expanded over
the features), so the feature dim is a channel through it; the scattered dim (nodes, and the edges the
messages come from) moves by data.
"""
from __future__ import annotations

from ..ir import Node, Ref
from ..reasons import INDEXED
from .registry import RuleContext, register

SCATTERS = ("aten.scatter_add", "aten.scatter_add_", "aten.scatter_reduce", "aten.scatter_reduce_", "aten.scatter",
            "aten.scatter_", "aten.index_add", "aten.index_add_", "aten.index_reduce", "aten.index_reduce_")


def scattered_into(ctx: RuleContext, out: str) -> bool:
    """Whether a fresh tensor (``src.new_zeros(size)``) is only ever the target of scatters: its sizes
    are its sources' (the scatter ties every dim but its own), so the factory may carry them
    (torch_geometric's aggregations start so)."""
    users = ctx.users(out)
    return bool(users) and all(u.op in SCATTERS and isinstance(u.args[0], Ref) and u.args[0].name == out
                               for u in users)


def _tie_others(ctx: RuleContext, node: Node, out: str, dim: int, names: list[str]) -> None:
    """Every dim but ``dim`` of each of ``names`` tied to ``out``'s, where their sizes agree (a
    smaller index or source along a dim writes part of it: frozen, as positions)."""
    rank = ctx.rank(out)
    for name in names:
        if ctx.rank(name) != rank:
            continue
        for d in range(rank):
            if d == dim:
                continue
            if ctx.shape(name)[d] == ctx.shape(out)[d]:
                ctx.tie(ctx.s(name, d), ctx.s(out, d))
            else:
                ctx.freeze(ctx.s(name, d), INDEXED, f"a part of dim {d} written at {node.where()}")
                ctx.freeze(ctx.s(out, d), INDEXED, f"a part of dim {d} written at {node.where()}")


def _scattered(ctx: RuleContext, node: Node, out: str, others: list[str]) -> None:
    """``out`` is ``self`` (args[0]) with ``others`` scattered into it along ``dim`` (args[1])."""
    x = node.args[0].name
    if ctx.rank(x) == 0:
        return  # a scalar: no dim to scatter along, nothing to tie
    dim = node.args[1] % ctx.rank(x)
    ctx.tie_dims(x, out, range(ctx.rank(x)), range(ctx.rank(x)))
    _tie_others(ctx, node, out, dim, others)
    for name in [x, out] + others:
        ctx.freeze(ctx.s(name, dim), INDEXED, f"positions scattered by an index at {node.where()}")


@register(*SCATTERS[:6])
def _scatter(node: Node, ctx: RuleContext) -> None:
    # out[..., index[i, j], ...] = src[i, j] along dim (index has src's rank; a scalar value writes no channel)
    src = [node.args[3].name] if len(node.args) > 3 and isinstance(node.args[3], Ref) else []
    _scattered(ctx, node, node.outputs[0], [node.args[2].name] + src)


@register(*SCATTERS[6:])
def _index_add(node: Node, ctx: RuleContext) -> None:
    # out = self; out[..., index[i], ...] (+)= source[..., i, ...] along dim (index is 1-D)
    _scattered(ctx, node, node.outputs[0], [node.args[3].name])
