"""Ops that reorder positions along some dims (roll, flip): those dims keep their size but
not their order, so they are frozen; every other dim passes through untouched."""
from __future__ import annotations

from ..ir import Node
from ..reasons import POSITIONAL
from .registry import RuleContext, register


@register("aten.roll", "aten.flip")
def _reorder(node: Node, ctx: RuleContext) -> None:
    x, out = node.args[0].name, node.outputs[0]
    rank = ctx.rank(x)
    if node.op == "aten.roll":
        dims = ctx.arg(node, 2, "dims", [])
        dims = [dims] if isinstance(dims, int) else list(dims)
        moved = set(range(rank)) if not dims else {d % rank for d in dims}  # no dims: rolls the flattened tensor
    else:
        moved = {d % rank for d in node.args[1]}
    move_positions(ctx, x, out, moved, f"positions reordered by {node.op} at {node.where()}")


def move_positions(ctx: RuleContext, x: str, out: str, moved: set[int], detail: str) -> None:
    """``moved`` dims of ``x`` have their positions reordered or mixed into ``out`` (frozen); the others pass."""
    for d in range(ctx.rank(x)):
        if d in moved:
            ctx.freeze(ctx.s(x, d), POSITIONAL, detail)
            ctx.freeze(ctx.s(out, d), POSITIONAL, detail)
        else:
            ctx.tie(ctx.s(x, d), ctx.s(out, d))
