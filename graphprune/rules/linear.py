"""Linear maps and matrix products: contracted dims tie, batch dims tie (with
broadcasting), and each operand's free dim ties the output dim it becomes."""
from __future__ import annotations

from ..ir import Node
from ..ops import Ops, aten
from ..reasons import INDEXED
from .registry import RuleContext, register


@register("aten.linear")
def _linear(node: Node, ctx: RuleContext) -> None:
    x, w = node.args[0].name, node.args[1].name
    b = ctx.arg(node, 2, "bias")
    out = node.outputs[0]
    ctx.tie(ctx.s(x, -1), ctx.s(w, 1))
    ctx.tie(ctx.s(w, 0), ctx.s(out, -1))
    if b is not None:
        ctx.tie(ctx.s(b, -1), ctx.s(out, -1))
    ctx.tie_dims(x, out, range(ctx.rank(x) - 1), range(ctx.rank(out) - 1))


def relate_matmul(ctx: RuleContext, a: str, b: str, out: str) -> None:
    """torch.matmul semantics for every rank combination."""
    ra, rb = ctx.rank(a), ctx.rank(b)
    if ra == 1 and rb == 1:
        ctx.tie(ctx.s(a, 0), ctx.s(b, 0))
        return
    if ra == 1:
        ctx.tie(ctx.s(a, 0), ctx.s(b, -2))
        ctx.tie(ctx.s(b, -1), ctx.s(out, -1))
        _tie_batch(ctx, b, rb - 2, out, ctx.rank(out) - 1)
        return
    if rb == 1:
        ctx.tie(ctx.s(a, -1), ctx.s(b, 0))
        ctx.tie(ctx.s(a, -2), ctx.s(out, -1))
        _tie_batch(ctx, a, ra - 2, out, ctx.rank(out) - 1)
        return
    ctx.tie(ctx.s(a, -1), ctx.s(b, -2))
    ctx.tie(ctx.s(a, -2), ctx.s(out, -2))
    ctx.tie(ctx.s(b, -1), ctx.s(out, -1))
    _tie_batch(ctx, a, ra - 2, out, ctx.rank(out) - 2)
    _tie_batch(ctx, b, rb - 2, out, ctx.rank(out) - 2)


def _tie_batch(ctx: RuleContext, src: str, n_src: int, out: str, n_out: int) -> None:
    for k in range(1, n_src + 1):  # right-aligned broadcasting over batch dims
        if n_out - k >= 0:
            ctx.tie(ctx.s(src, n_src - k), ctx.s(out, n_out - k))


@register(*aten(Ops.MatMul))
def _matmul(node: Node, ctx: RuleContext) -> None:
    relate_matmul(ctx, node.args[0].name, node.args[1].name, node.outputs[0])


@register("aten.addmm", "aten.baddbmm", "aten.addbmm")
def _addmm(node: Node, ctx: RuleContext) -> None:
    bias, a, b = (r.name for r in node.args[:3])
    out = node.outputs[0]
    relate_matmul(ctx, a, b, out)
    ctx.tie_broadcast(out, [bias])


@register("aten.outer", "aten.ger")
def _outer(node: Node, ctx: RuleContext) -> None:
    a, b, out = node.args[0].name, node.args[1].name, node.outputs[0]
    ctx.tie(ctx.s(a, 0), ctx.s(out, 0))
    ctx.tie(ctx.s(b, 0), ctx.s(out, 1))


@register("aten.einsum")
def _einsum(node: Node, ctx: RuleContext) -> None:
    # Every occurrence of one subscript letter is one index space.
    equation = node.args[0].replace(" ", "")
    operands = [r.name for r in node.args[1]]
    lhs, _, rhs = equation.partition("->")
    specs = lhs.split(",")
    if not rhs and "->" not in equation:  # implicit output: broadcast dims, then once-used letters
        letters = [c for c in lhs if c.isalpha()]
        rhs = ("..." if "..." in lhs else "") + "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    names = operands + [node.outputs[0]]
    seen: dict[str, tuple[str, int]] = {}
    for name, spec in zip(names, specs + [rhs]):
        for d, letter in enumerate(expand_ellipsis(spec, ctx.rank(name))):
            key = (name, d)
            if letter in seen:
                first = seen[letter]
                ctx.tie(ctx.s(*first), ctx.s(*key))
            else:
                seen[letter] = key


@register("aten.tensordot")
def _tensordot(node: Node, ctx: RuleContext) -> None:
    # tensordot(a, b, dims_a, dims_b): a's contracted dims pair with b's; the output is a's other dims
    # in order, then b's (tensorly's factorized weights, TFNO's spectral layers)
    a, b, out = node.args[0].name, node.args[1].name, node.outputs[0]
    ra, rb = ctx.rank(a), ctx.rank(b)
    dims_a, dims_b = ([d % r for d in ctx.arg(node, i, n, [])] for i, n, r in ((2, "dims_self", ra), (3, "dims_other", rb)))
    for da, db in zip(dims_a, dims_b):
        ctx.tie(ctx.s(a, da), ctx.s(b, db))
    free = [(a, d) for d in range(ra) if d not in dims_a] + [(b, d) for d in range(rb) if d not in dims_b]
    for o, (x, d) in enumerate(free):
        ctx.tie(ctx.s(x, d), ctx.s(out, o))


def expand_ellipsis(spec: str, rank: int) -> list[str]:
    if "..." not in spec:
        return list(spec)
    head, tail = spec.split("...")
    n = rank - len(head) - len(tail)
    return list(head) + [f"…{n - i}" for i in range(n)] + list(tail)  # right-aligned, as broadcasting


@register("onnx.MatMul")
def _onnx_matmul(node: Node, ctx: RuleContext) -> None:
    relate_matmul(ctx, node.args[0].name, node.args[1].name, node.outputs[0])


@register("onnx.Gemm")
def _onnx_gemm(node: Node, ctx: RuleContext) -> None:
    # Y = alpha * A' @ B' + beta * C, with A' = A^T if transA, B' = B^T if transB.
    a, b, out = node.args[0].name, node.args[1].name, node.outputs[0]
    ta, tb = node.kwargs.get("transA", 0), node.kwargs.get("transB", 0)
    m_a, k_a = (1, 0) if ta else (0, 1)
    k_b, n_b = (1, 0) if tb else (0, 1)
    ctx.tie(ctx.s(a, k_a), ctx.s(b, k_b))
    ctx.tie(ctx.s(a, m_a), ctx.s(out, 0))
    ctx.tie(ctx.s(b, n_b), ctx.s(out, 1))
    if len(node.args) > 2 and node.args[2] is not None:
        ctx.tie_broadcast(out, [node.args[2].name])


@register("onnx.Einsum")
def _onnx_einsum(node: Node, ctx: RuleContext) -> None:
    shim = Node(node.name, node.op, (node.kwargs["equation"], list(node.args)), {}, node.outputs, node.meta)
    _einsum(shim, ctx)


@register(*sorted(Ops.GroupedMatMul))
def _grouped_mm(node: Node, ctx: RuleContext) -> None:
    """Mixture-of-experts products (transformers' grouped_mm_fallback, torch's grouped_mm): rows (S, K) of
    tokens sorted by expert, times one (K, N) matrix per expert stacked as (E, K, N), row s taking the
    expert its offset range names. K and N are channel spaces shared by every expert: unit j of an
    expert FFN goes from all experts at once. The expert dim stays whole: the router's offsets index it."""
    x, w, out = node.args[0].name, node.args[1].name, node.outputs[0]
    if ctx.rank(x) != 2 or ctx.rank(w) != 3:
        for v in (x, w, out):
            for d in range(ctx.rank(v)):
                ctx.freeze(ctx.s(v, d), INDEXED, f"a grouped product of other ranks than (S, K) x (E, K, N) at {node.where()}")
        return
    ctx.tie(ctx.s(x, 1), ctx.s(w, 1))
    ctx.tie(ctx.s(w, 2), ctx.s(out, 1))
    ctx.tie(ctx.s(x, 0), ctx.s(out, 0))
    ctx.freeze(ctx.s(w, 0), INDEXED, f"experts, which the router's offsets index, at {node.where()}")
