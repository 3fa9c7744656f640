"""Ops that create tensors from their arguments (zeros, empty, arange, ...).

Their sizes are numbers in the op's arguments, not channels any input carries, so their
output dims are frozen, except in these patterns, whose sizes the rewrite may carry:

- a recurrent layer's zero initial state (its size follows the hidden units), and zeros that only element-wise
  ops read (a hand-written recurrence's state: every channel starts alike);
- a buffer assembled from pieces: a fresh tensor whose slices along one dim are each
  written whole by ``copy_`` before anything reads it (DeepSeek-V3's MLA builds its keys
  so: ``new_empty`` then ``k[..., :n].copy_(k_nope)`` and ``k[..., n:].copy_(k_rot)``).
  It is a concatenation written in place: every other dim is the pieces' dims, which the
  slices and copies tie, and the buffer's size follows them;
- a filled buffer (zeros, full) written in part, through slices, before anything reads it (a neural operator's spectrum:
  ``out = zeros(b, c, h, w)`` then ``out[:, :, :m, :m] = einsum(...)``): the dims no slice narrows
  are the written values' dims, every channel written alike, so they carry; the narrowed ones are positions
  (a nonzero fill in a removed channel goes with it, as a bias does: the oracle zeroes the whole channel);
- a target only scatters write into (a graph network's aggregation: ``src.new_zeros(size)`` then
  ``scatter_add_``; scatter.py ties its dims to the sources').
"""
from __future__ import annotations

from ..ir import Node, Ref
from ..reasons import COMPUTED
from .recurrent import zero_state
from .registry import RuleContext, defopaque_outputs, register
from .scatter import scattered_into
from .shape import slice_bounds

# op -> the index of its size list (zeros/empty/full take it first, the new_* methods after self)
_SIZED = {"aten.zeros": 0, "aten.empty": 0, "aten.full": 0,
          "aten.new_zeros": 1, "aten.new_empty": 1, "aten.new_full": 1}
defopaque_outputs(*(f"aten.{op}" for op in "arange ones scalar_tensor new_ones randn rand tensor linspace".split()))
_ELEMENTWISE = {f"aten.{op}" for op in "add sub mul div rsub maximum minimum where addcmul lerp".split()}


@register(*_SIZED)
def _sized(node: Node, ctx: RuleContext) -> None:
    out, at = node.outputs[0], _SIZED[node.op]
    size = node.args[at] if len(node.args) > at else node.kwargs.get("size")
    filled = "empty" not in node.op
    part = padded(ctx, out) if filled and isinstance(size, (list, tuple)) else None
    narrowed = part or set()
    if isinstance(size, (list, tuple)) and ((node.op == "aten.zeros" and zero_state(ctx, out))
                                            or assembled(ctx, node, out) or scattered_into(ctx, out)
                                            or part is not None or ("zeros" in node.op and _state(ctx, out))):
        for d, n in enumerate(size):
            if d in narrowed:
                ctx.freeze(ctx.s(out, d), COMPUTED, f"positions written in part, size set by the arguments of {node.where()}")
            elif isinstance(n, int) and n > 1:
                ctx.carry(ctx.s(out, d), (at, d), n)
        return
    ctx.freeze_value(out, COMPUTED, f"size set by the arguments of {node.where()}")


def _state(ctx: RuleContext, out: str) -> bool:
    """Whether ``out`` (zeros) is only read by ops that combine it element by element: a hand-written recurrence's
    state (``c = x.new_zeros(b, self.d)``, then ``c = f * c + (1 - f) * u``), whose every channel starts alike, so
    its size follows the channels it meets. Not another fill: its value may be computed from the size it has
    (``new_full((b, d), 1 / d)``: review)."""
    users = ctx.users(out)
    return bool(users) and all(u.op in _ELEMENTWISE and out not in u.outputs for u in users)


def _span(node: Node, ctx: RuleContext, out: str) -> tuple[int, int, int] | None:
    """(dim, start, stop) of a unit-step slice or narrow of ``out``; None for anything else."""
    if not node.args or not isinstance(node.args[0], Ref) or node.args[0].name != out:
        return None
    rank = ctx.rank(out)
    if node.op == "aten.slice":
        dim, start, stop = ctx.arg(node, 1, "dim", 0), ctx.arg(node, 2, "start", None) or 0, ctx.arg(node, 3, "end", None)
        if ctx.arg(node, 4, "step", 1) != 1:
            return None
    elif node.op == "aten.narrow" and len(node.args) >= 4 and isinstance(node.args[2], int) \
            and isinstance(node.args[3], int):
        dim, start = node.args[1], node.args[2]
        stop = start + node.args[3]
    else:
        return None
    if not isinstance(dim, int) or not isinstance(start, int) or not (stop is None or isinstance(stop, int)):
        return None
    dim %= rank
    return (dim, *slice_bounds(ctx.shape(out)[dim], start, stop))


def assembled(ctx: RuleContext, node: Node, out: str) -> bool:
    """Whether ``out`` is written whole, piece by piece, by copies into slices of it along one
    dim before any other op reads it (see the module docstring)."""
    spans, writes, reads = [], [], []
    for u in ctx.users(out):
        span = _span(u, ctx, out)
        copies = ctx.users(u.outputs[0]) if span is not None else []
        if span is not None and copies and all(c.op == "aten.copy_" and isinstance(c.args[0], Ref)
                                               and c.args[0].name == u.outputs[0] for c in copies):
            spans.append(span)
            writes.extend(copies)
        else:
            reads.append(u)
    if not spans or len({d for d, _, _ in spans}) != 1:
        return False
    dim, covered = spans[0][0], 0
    for _, start, stop in sorted(spans, key=lambda s: s[1]):
        if start > covered:
            return False  # a gap: part of the buffer is never written
        covered = max(covered, stop)
    return covered == ctx.shape(out)[dim] and _before_reads(ctx, writes, reads)


def _before_reads(ctx: RuleContext, writes: list[Node], reads: list[Node]) -> bool:
    """Whether every write comes before every read in the graph's order."""
    position = {n.name: i for i, n in enumerate(ctx.graph.nodes)}
    return max(position[w.name] for w in writes) < min((position[r.name] for r in reads), default=len(position))


def padded(ctx: RuleContext, out: str) -> set[int] | None:
    """The dims narrowed where ``out`` is written only through chains of slices ending in ``copy_``
    before any other op reads it (see the module docstring); None where it is read or written otherwise."""
    narrowed, writes, reads = set(), [], []
    for u in ctx.users(out):
        node, base, dims = u, out, set()
        while (span := _span(node, ctx, base)) is not None:
            if span[1:] != (0, ctx.shape(base)[span[0]]):
                dims.add(span[0])
            base, after = node.outputs[0], ctx.users(node.outputs[0])
            if len(after) != 1:
                break
            node = after[0]
        if base != out and node.op == "aten.copy_" and isinstance(node.args[0], Ref) and node.args[0].name == base:
            writes.append(node)
            narrowed |= dims
        else:
            reads.append(u)
    return narrowed if writes and _before_reads(ctx, writes, reads) else None
