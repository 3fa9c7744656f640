"""Fused attention. q/k contract over head_dim, k/v share the key positions,
heads are a batch dim of q, k, v and the output; with enable_gqa the query heads
factor as (kv head, query-per-kv) so a pruned kv head takes its query heads along."""
from __future__ import annotations

from ..ir import Node
from ..reasons import POSITIONAL, SDPA_SCALE, SOFTMAX
from .registry import RuleContext, register


@register("aten.scaled_dot_product_attention")
def _sdpa(node: Node, ctx: RuleContext) -> None:
    q, k, v = (r.name for r in node.args[:3])
    out = node.outputs[0]
    mask = ctx.arg(node, 3, "attn_mask")
    is_causal = ctx.arg(node, 5, "is_causal", False)
    scale = ctx.arg(node, 6, "scale", None)
    gqa = node.kwargs.get("enable_gqa", node.args[7] if len(node.args) > 7 else False)
    rank = ctx.rank(q)
    ctx.tie(ctx.s(q, -1), ctx.s(k, -1))
    ctx.tie(ctx.s(k, -2), ctx.s(v, -2))
    ctx.tie(ctx.s(out, -2), ctx.s(q, -2))
    ctx.tie(ctx.s(out, -1), ctx.s(v, -1))
    lead = range(rank - 2)
    ctx.tie_dims(q, out, lead, lead)
    ctx.tie_dims(k, v, lead, lead)
    hq, hk = ctx.shape(q)[-3] if rank >= 3 else 1, ctx.shape(k)[-3] if rank >= 3 else 1
    if gqa and rank >= 3 and hq != hk:
        ctx.tie_dims(q, k, range(rank - 3), range(rank - 3))
        ctx.factor(ctx.s(q, -3), [ctx.s(k, -3), ctx.virtual(hq // hk, "queries_per_kv")])
    else:
        ctx.tie_dims(q, k, lead, lead)
    if scale is None:
        ctx.inexact(ctx.s(q, -1), SDPA_SCALE,
                    f"default scale 1/sqrt(head_dim) of {node.where()}; pass scale= to prune it exactly")
    ctx.inexact(ctx.s(k, -2), SOFTMAX, f"softmax over key positions at {node.where()}")
    if is_causal:
        for key in (ctx.s(q, -2), ctx.s(k, -2)):
            ctx.freeze(key, POSITIONAL, f"causal mask is positional at {node.where()}")
    if mask is not None:
        mrank = ctx.rank(mask)
        targets = [ctx.s(q, d) for d in range(rank - 1)] + [ctx.s(k, -2)]
        for i in range(1, mrank + 1):
            if len(targets) - i >= 0 and ctx.shape(mask)[-i] != 1:
                ctx.tie(ctx.s(mask, -i), targets[-i])
