"""Shape ops: reshapes are factorisations, cat/split are concatenations,
permutes tie dims in a new order, and indexing freezes the indexed dim.

Constants that spell out a size (view targets, split sizes, slice bounds) are
recorded with ``ctx.carry`` so back-ends can rewrite them.
"""
from __future__ import annotations

from ..ir import Node, Ref
from ..reasons import INDEXED, LAYOUT, POSITIONAL, SYMBOLIC
from .registry import RuleContext, register

_INT_MAX = 2**62  # slice ends like 9223372036854775807 mean "to the end"


def relate_reshape(ctx: RuleContext, src: str, out: str) -> None:
    """Group dims whose running products match; each group is a tie or a factorisation.

    Unit dims carry nothing and are skipped. Symbolic dims (a dynamic batch) are
    matched by name at either end; what lies between must be static.
    """
    ishape, oshape = ctx.shape(src), ctx.shape(out)
    idims = [d for d, n in enumerate(ishape) if n != 1]
    odims = [d for d, n in enumerate(oshape) if n != 1]
    while idims and odims and not isinstance(ishape[idims[0]], int) and ishape[idims[0]] == oshape[odims[0]]:
        ctx.tie(ctx.s(src, idims.pop(0)), ctx.s(out, odims.pop(0)))
    while idims and odims and not isinstance(ishape[idims[-1]], int) and ishape[idims[-1]] == oshape[odims[-1]]:
        ctx.tie(ctx.s(src, idims.pop()), ctx.s(out, odims.pop()))
    if not all(isinstance(ishape[d], int) for d in idims) or not all(isinstance(oshape[d], int) for d in odims):
        reason = f"reshape with symbolic sizes at {ctx.where()}"
        for d in idims:
            ctx.freeze(ctx.s(src, d), SYMBOLIC, reason)
        for d in odims:
            ctx.freeze(ctx.s(out, d), SYMBOLIC, reason)
        return
    i = j = 0
    while i < len(idims) and j < len(odims):
        gi, gj = [idims[i]], [odims[j]]
        pi, pj = ishape[idims[i]], oshape[odims[j]]
        while pi != pj:
            if pi < pj:
                i += 1
                gi.append(idims[i])
                pi *= ishape[idims[i]]
            else:
                j += 1
                gj.append(odims[j])
                pj *= oshape[odims[j]]
        i += 1
        j += 1
        ins = [ctx.s(src, d) for d in gi]
        outs = [ctx.s(out, d) for d in gj]
        if len(ins) == 1 and len(outs) == 1:
            ctx.tie(ins[0], outs[0])
        elif len(ins) == 1:
            ctx.factor(ins[0], outs)
        elif len(outs) == 1:
            ctx.factor(outs[0], ins)
        else:
            flat = ctx.virtual(pi, "reshape")
            ctx.factor(flat, ins)
            ctx.factor(flat, outs)


def _carry_sizes(ctx: RuleContext, node: Node, out: str, arg_index: int, sizes: list, offset: int = 0) -> None:
    for k, size in enumerate(sizes):
        if isinstance(size, int) and size > 1:
            ctx.carry(ctx.s(out, k + offset), (arg_index, k), size)


@register("aten.view", "aten.reshape", "aten._unsafe_view", "aten.view_copy")
def _view(node: Node, ctx: RuleContext) -> None:
    src, out = node.args[0].name, node.outputs[0]
    relate_reshape(ctx, src, out)
    _carry_sizes(ctx, node, out, 1, list(node.args[1]))


@register("aten.flatten", "aten.squeeze", "aten.unsqueeze", "aten.squeeze_copy", "aten.unsqueeze_copy",
          "aten.view_as", "aten.reshape_as", "aten.ravel")
def _reshape_implicit(node: Node, ctx: RuleContext) -> None:
    relate_reshape(ctx, node.args[0].name, node.outputs[0])


@register("aten.unflatten")
def _unflatten(node: Node, ctx: RuleContext) -> None:
    src, out = node.args[0].name, node.outputs[0]
    relate_reshape(ctx, src, out)
    dim = node.args[1] % ctx.rank(src)
    _carry_sizes(ctx, node, out, 2, list(node.args[2]), offset=dim)


@register("aten.view_as_complex", "aten.view_as_real")
def _complex_view(node: Node, ctx: RuleContext) -> None:
    # Llama 4's complex RoPE: (..., pairs, 2) reals <-> (..., pairs) complex. The leading dims (batch, tokens,
    # heads, pairs) are the same dims; the trailing 2 is a real and an imaginary part, never a channel.
    src, out = node.args[0].name, node.outputs[0]
    to_complex = node.op.endswith("view_as_complex")
    lead = ctx.rank(src) - 1 if to_complex else ctx.rank(src)
    ctx.tie_dims(src, out, range(lead), range(lead))
    parts = ctx.s(src, lead) if to_complex else ctx.s(out, lead)
    ctx.freeze(parts, POSITIONAL, f"real and imaginary parts at {node.where()}")


@register("aten.permute", "aten.permute_copy")
def _permute(node: Node, ctx: RuleContext) -> None:
    src, out = node.args[0].name, node.outputs[0]
    rank = ctx.rank(src)
    for o, i in enumerate(node.args[1]):
        ctx.tie(ctx.s(src, i % rank), ctx.s(out, o))


@register("aten.transpose", "aten.swapaxes", "aten.swapdims", "aten.t", "aten.numpy_T")
def _transpose(node: Node, ctx: RuleContext) -> None:
    src, out = node.args[0].name, node.outputs[0]
    rank = ctx.rank(src)
    order = list(range(rank))
    if rank >= 2:
        d0 = node.args[1] % rank if len(node.args) > 1 else 0
        d1 = node.args[2] % rank if len(node.args) > 2 else 1
        order[d0], order[d1] = order[d1], order[d0]
    for o, i in enumerate(order):
        ctx.tie(ctx.s(src, i), ctx.s(out, o))


@register("aten.movedim")
def _movedim(node: Node, ctx: RuleContext) -> None:
    src, out = node.args[0].name, node.outputs[0]
    rank = ctx.rank(src)
    s = node.args[1] if isinstance(node.args[1], (list, tuple)) else [node.args[1]]
    d = node.args[2] if isinstance(node.args[2], (list, tuple)) else [node.args[2]]
    s, d = [x % rank for x in s], [x % rank for x in d]
    order: list[int | None] = [None] * rank
    for a, b in zip(s, d):
        order[b] = a
    rest = iter(i for i in range(rank) if i not in s)
    for o in range(rank):
        ctx.tie(ctx.s(src, order[o] if order[o] is not None else next(rest)), ctx.s(out, o))


@register("aten.expand", "aten.expand_copy", "aten.broadcast_to")
def _expand(node: Node, ctx: RuleContext) -> None:
    src, out = node.args[0].name, node.outputs[0]
    ctx.tie_broadcast(out, [src])
    _carry_sizes(ctx, node, out, 1, list(node.args[1]))


@register("aten.expand_as")
def _expand_as(node: Node, ctx: RuleContext) -> None:
    ctx.tie_broadcast(node.outputs[0], [node.args[0].name])


@register("aten.repeat")
def _repeat(node: Node, ctx: RuleContext) -> None:
    # Tiling: out = prod(copies, in) along each dim, copies being a fresh frozen space.
    src, out = node.args[0].name, node.outputs[0]
    reps = list(node.args[1])
    off = len(reps) - ctx.rank(src)
    for d in range(ctx.rank(src)):
        r = reps[d + off]
        if r == 1:
            ctx.tie(ctx.s(src, d), ctx.s(out, d + off))
        elif ctx.shape(src)[d] == 1:  # copies of one position, as expand makes (chemprop's index repeated to
            ctx.carry(ctx.s(out, d + off), (1, d + off), r)  # the hidden width for scatter_reduce): the count is carried
        else:
            copies = ctx.virtual(r, "repeat")
            ctx.freeze(copies, LAYOUT, f"repeat count at {ctx.where()}")
            ctx.factor(ctx.s(out, d + off), [copies, ctx.s(src, d)])


@register("aten.repeat_interleave")
def _repeat_interleave(node: Node, ctx: RuleContext) -> None:
    # Each input position becomes `repeats` consecutive outputs (GQA's key/value heads repeated
    # for their query heads): out = prod(in, copies), the input outer. Like expand's new dim, the
    # copies are a space of their own (the query heads per key/value head, once attention ties
    # them to q) whose size the repeats argument spells.
    src, out = node.args[0], node.outputs[0]
    reps, dim = ctx.arg(node, 1, "repeats"), ctx.arg(node, 2, "dim")
    # ``output_size`` (Mamba2's B/C groups expanded to its heads: ``output_size=self.num_heads``) spells the result's
    # size, keyword-only: carried, so the rewrite's proof traces the pruned forward again and a literal is refused
    if not isinstance(src, Ref) or not isinstance(reps, int) or dim is None:
        why = "tensor repeats" if not isinstance(reps, int) else "no dim (flattens)"
        reason = f"repeat_interleave with {why} at {ctx.where()}"
        for name in dict.fromkeys(node.inputs + node.outputs):
            ctx.freeze_value(name, LAYOUT, reason)
        return
    d = dim % ctx.rank(src)
    ctx.tie_dims(src, out, [k for k in range(ctx.rank(src)) if k != d], [k for k in range(ctx.rank(src)) if k != d])
    if reps == 1:
        ctx.tie(ctx.s(src, d), ctx.s(out, d))
        return
    copies = ctx.virtual(reps, "repeat_interleave")
    ctx.factor(ctx.s(out, d), [ctx.s(src, d), copies])
    ctx.carry(copies, (1,), reps)
    if isinstance(ctx.arg(node, 3, "output_size"), int):
        ctx.carry(ctx.s(out, d), ("output_size",), ctx.arg(node, 3, "output_size"))


@register("aten.cat", "aten.concat", "aten.concatenate")
def _cat(node: Node, ctx: RuleContext) -> None:
    out = node.outputs[0]
    parts = [t.name for t in node.args[0] if isinstance(t, Ref) and ctx.rank(t) > 0 and ctx.shape(t) != (0,)]
    dim = (ctx.arg(node, 1, "dim", 0)) % ctx.rank(out)
    ctx.concat(ctx.s(out, dim), [ctx.s(p, dim) for p in parts])
    for p in parts:
        ctx.tie_dims(p, out, [d for d in range(ctx.rank(out)) if d != dim], [d for d in range(ctx.rank(out)) if d != dim])


@register("aten.stack")
def _stack(node: Node, ctx: RuleContext) -> None:
    out = node.outputs[0]
    parts = [t.name for t in node.args[0]]
    dim = ctx.arg(node, 1, "dim", 0) % ctx.rank(out)
    for p in parts:
        ctx.tie_dims(p, out, range(ctx.rank(p)), [d if d < dim else d + 1 for d in range(ctx.rank(p))])
    ctx.freeze(ctx.s(out, dim), LAYOUT, f"stacked dim at {ctx.where()}")


def _split_parts(node: Node, ctx: RuleContext, dim: int, equal: bool) -> None:
    src = node.args[0].name
    outs = node.outputs
    ctx.concat(ctx.s(src, dim), [ctx.s(o, dim) for o in outs])
    others = [d for d in range(ctx.rank(src)) if d != dim]
    for o in outs:
        ctx.tie_dims(src, o, others, others)
    if equal:
        # One constant (chunk count or split size) describes every part: they must
        # shrink alike, so they share one space.
        full = [o for o in outs if ctx.shape(o)[dim] == ctx.shape(outs[0])[dim]]
        for o in full[1:]:
            ctx.tie(ctx.s(full[0], dim), ctx.s(o, dim))
        if len(full) != len(outs):
            ctx.freeze(ctx.s(src, dim), LAYOUT, f"uneven split at {ctx.where()}")


@register("aten.split", "aten.split_copy")
def _split(node: Node, ctx: RuleContext) -> None:
    dim = ctx.arg(node, 2, "dim", 0) % ctx.rank(node.args[0])
    sizes = node.args[1]
    if isinstance(sizes, (list, tuple)):
        _split_parts(node, ctx, dim, equal=False)
        for k, o in enumerate(node.outputs):
            ctx.carry(ctx.s(o, dim), (1, k), sizes[k])
    else:
        _split_parts(node, ctx, dim, equal=True)
        ctx.carry(ctx.s(node.outputs[0], dim), (1,), sizes)


@register("aten.split_with_sizes", "aten.split_with_sizes_copy")
def _split_with_sizes(node: Node, ctx: RuleContext) -> None:
    dim = ctx.arg(node, 2, "dim", 0) % ctx.rank(node.args[0])
    _split_parts(node, ctx, dim, equal=False)
    for k, o in enumerate(node.outputs):
        ctx.carry(ctx.s(o, dim), (1, k), node.args[1][k])


@register("aten.chunk")
def _chunk(node: Node, ctx: RuleContext) -> None:
    dim = ctx.arg(node, 2, "dim", 0) % ctx.rank(node.args[0])
    _split_parts(node, ctx, dim, equal=True)


@register("aten.unbind", "aten.unbind_copy")
def _unbind(node: Node, ctx: RuleContext) -> None:
    src = node.args[0].name
    dim = ctx.arg(node, 1, "dim", 0) % ctx.rank(src)
    ctx.freeze(ctx.s(src, dim), INDEXED, f"dim indexed by unbind at {ctx.where()}")
    for o in node.outputs:
        ctx.tie_dims(src, o, [d for d in range(ctx.rank(src)) if d != dim], range(ctx.rank(o)))


@register("aten.select", "aten.select_copy")
def _select(node: Node, ctx: RuleContext) -> None:
    src, out = node.args[0].name, node.outputs[0]
    dim = node.args[1] % ctx.rank(src)
    ctx.freeze(ctx.s(src, dim), INDEXED, f"dim indexed by select at {ctx.where()}")
    ctx.tie_dims(src, out, [d for d in range(ctx.rank(src)) if d != dim], range(ctx.rank(out)))


def window(ctx: RuleContext, src: str, out: str, d: int, start: int, stop: int, start_path, stop_path,
           raw_start, raw_stop, stop_is_length: bool = False) -> None:
    """out[d] is the [start, stop) window of src[d]: src = cat(before, out, after).

    The bounds are carried for rewriting: a non-negative start counts the
    'before' part, a negative one the tail (out + after); likewise for stop.
    """
    n = ctx.shape(src)[d]
    before = ctx.virtual(start, "slice_before") if start > 0 else None
    after = ctx.virtual(n - stop, "slice_after") if stop < n else None
    ctx.concat(ctx.s(src, d), [p for p in (before, ctx.s(out, d), after) if p is not None])
    if ctx.stored(src):
        # a stored tensor read up to the example's sizes (ImageGPT's causal mask bias[..., :length], a position
        # table pos[:, :n]): the rows left unread serve other inputs (a longer sequence), and cutting them, which
        # saves no work, broke the model beyond the example's length
        for part in (p for p in (before, after) if p is not None):
            ctx.freeze(part, POSITIONAL, f"rows of '{src}' dim {d} the slice at {ctx.where()} leaves unread at the "
                                         "example's sizes: other inputs (a longer sequence) read them")
    if before is not None and isinstance(raw_start, int):
        if raw_start >= 0:
            ctx.carry(before, start_path, raw_start)
        else:
            tail = ctx.virtual(n - start, "slice_tail")
            ctx.concat(tail, [p for p in (ctx.s(out, d), after) if p is not None])
            ctx.carry(tail, start_path, raw_start)
    if stop_is_length:
        ctx.carry(ctx.s(out, d), stop_path, raw_stop)
    elif after is not None and isinstance(raw_stop, int):
        if raw_stop < 0:
            ctx.carry(after, stop_path, raw_stop)
        else:
            head = ctx.virtual(stop, "slice_head")
            ctx.concat(head, [p for p in (before, ctx.s(out, d)) if p is not None])
            ctx.carry(head, stop_path, raw_stop)


def _range_rule(node: Node, ctx: RuleContext, dim: int, start: int, stop: int, start_path, stop_path,
                stop_is_length: bool) -> None:
    src, out = node.args[0].name, node.outputs[0]
    others = [d for d in range(ctx.rank(src)) if d != dim]
    ctx.tie_dims(src, out, others, others)
    if not isinstance(ctx.shape(src)[dim], int):
        ctx.freeze(ctx.s(src, dim), SYMBOLIC, f"slice of a symbolic dim at {ctx.where()}")
        ctx.freeze(ctx.s(out, dim), SYMBOLIC, f"slice of a symbolic dim at {ctx.where()}")
        return
    raw_start = node.args[start_path[0]] if len(node.args) > start_path[0] else None
    raw_stop = node.args[stop_path[0]] if len(node.args) > stop_path[0] else None
    window(ctx, src, out, dim, start, stop, start_path, stop_path, raw_start, raw_stop, stop_is_length)


def slice_bounds(n: int, start: int, stop: int | None) -> tuple[int, int]:
    """A slice's [start, stop) within a dim of size n, as Python reads it: negative from the end, an open or
    huge end (9223372036854775807) to the end, clamped to the dim."""
    stop = n if stop is None or stop >= _INT_MAX else stop
    start, stop = (start + n if start < 0 else start), (stop + n if stop < 0 else stop)
    return max(0, min(start, n)), max(0, min(stop, n))


@register("aten.slice", "aten.slice_copy")
def _slice(node: Node, ctx: RuleContext) -> None:
    src, out = node.args[0].name, node.outputs[0]
    rank = ctx.rank(src)
    dim = ctx.arg(node, 1, "dim", 0) % rank
    n = ctx.shape(src)[dim]
    start = ctx.arg(node, 2, "start", None) or 0
    stop = ctx.arg(node, 3, "end", None)
    step = ctx.arg(node, 4, "step", 1)
    if not isinstance(n, int) or not isinstance(start, int) or not (stop is None or isinstance(stop, int)):
        ctx.tie_dims(src, out, [d for d in range(rank) if d != dim], [d for d in range(rank) if d != dim])
        ctx.freeze(ctx.s(src, dim), SYMBOLIC, f"slice with symbolic bounds at {ctx.where()}")
        ctx.freeze(ctx.s(out, dim), SYMBOLIC, f"slice with symbolic bounds at {ctx.where()}")
        return
    start, stop = slice_bounds(n, start, stop)
    if start >= n and ctx.shape(out)[dim] == 0:
        # x[:, n::k], empty (pykan's x[:, dim_sum::mult_arity] with no multiplication nodes): it reads no channel,
        # and a narrower dim leaves it as empty
        ctx.tie_dims(src, out, [d for d in range(rank) if d != dim], [d for d in range(rank) if d != dim])
        return
    if step != 1:
        ctx.tie_dims(src, out, [d for d in range(rank) if d != dim], [d for d in range(rank) if d != dim])
        raw_stop = ctx.arg(node, 3, "end", None)
        if isinstance(step, int) and step > 1 and start < step and n % step == 0 and stop == n \
                and (raw_stop is None or raw_stop >= _INT_MAX):
            # x[..., s::k] over the whole dim, to its open end: one of k interleaved parts (GPT-OSS's
            # gate_up[..., ::2] and [..., 1::2]). The dim is (n/k units) x (k parts), unit-major; a pruned unit
            # takes its k parts, and the slice needs no new bound
            units, parts = ctx.virtual(n // step, "interleaved_units"), ctx.virtual(step, "interleaved_parts")
            ctx.factor(ctx.s(src, dim), [units, parts])
            ctx.tie(units, ctx.s(out, dim))
            ctx.freeze(parts, LAYOUT, f"interleaved parts of a strided slice at {ctx.where()}")
            return
        ctx.freeze(ctx.s(src, dim), LAYOUT, f"strided slice at {ctx.where()}")
        ctx.freeze(ctx.s(out, dim), LAYOUT, f"strided slice at {ctx.where()}")
        return
    _range_rule(node, ctx, dim, start, stop, (2,), (3,), stop_is_length=False)


@register("aten.narrow", "aten.narrow_copy")
def _narrow(node: Node, ctx: RuleContext) -> None:
    src = node.args[0].name
    dim = node.args[1] % ctx.rank(src)
    n = ctx.shape(src)[dim]
    start, length = node.args[2], node.args[3]
    if isinstance(start, int) and start < 0 and isinstance(n, int):
        start += n
    _range_rule(node, ctx, dim, start, start + length, (2,), (3,), stop_is_length=True)
