"""Parameter and MAC counts read off the IR (attention matmuls included)."""
from __future__ import annotations

import math
from typing import Callable

from .ir import Graph, Node
from .rules.linear import expand_ellipsis

ShapeFn = Callable[[str], tuple]


def _numel(shape: tuple) -> int:
    return math.prod(int(d) for d in shape if isinstance(d, int))


def count_params(g: Graph, shape_of: ShapeFn | None = None) -> int:
    """Learned parameters; a tensor tied under several names counts once."""
    shape_of = shape_of or (lambda n: g.values[n].shape)
    seen: set[str] = set()
    total = 0
    for v in g.values.values():
        if v.kind != "param":
            continue
        names = g.aliases.get(v.source or v.name, [v.source or v.name])
        if seen.intersection(names):
            continue
        n = _numel(shape_of(v.name))
        if n == 0:
            continue  # removed with a block; a tied alias that lives on is counted where it is used
        seen.update(names)
        total += n
    return total


def node_macs(n: Node, shape_of: ShapeFn) -> int:
    op = n.op.split(".")[-1]
    out = shape_of(n.outputs[0]) if n.outputs else ()
    refs = [r.name for r in n.refs()]
    if op.startswith("conv") or op in ("convolution", "_convolution"):
        w = shape_of(refs[1])
        transposed = op.startswith("conv_transpose") or (op in ("convolution", "_convolution") and bool(n.args[6]))
        if transposed:  # each input element scatters into C_out/g * kernel outputs
            return _numel(shape_of(refs[0])) * _numel(w[1:])
        return _numel(out) * _numel(w[1:])
    if op == "linear":
        return _numel(out) * int(shape_of(refs[1])[1])
    if op in ("matmul", "mm", "bmm", "grouped_mm_fallback", "_grouped_mm", "grouped_mm"):  # grouped: rows x K x N
        return _numel(out) * int(shape_of(refs[0])[-1])
    if op in ("addmm", "baddbmm", "addbmm"):
        return _numel(out) * int(shape_of(refs[1])[-1])
    if op == "einsum":

        lhs = n.args[0].replace(" ", "").split("->")[0].split(",")
        sizes: dict[str, int] = {}
        for name, spec in zip(refs, lhs):
            shape = shape_of(name)
            for letter, d in zip(expand_ellipsis(spec, len(shape)), shape):
                sizes[letter] = max(sizes.get(letter, 1), int(d))
        return math.prod(sizes.values())
    if op in ("lstm", "gru", "rnn_tanh", "rnn_relu", "LSTM", "GRU", "RNN"):
        return _recurrent_macs(n, refs, shape_of)
    if n.op.startswith("onnx."):
        return _onnx_macs(op, n, refs, out, shape_of)
    if op == "scaled_dot_product_attention":
        q, k, v = (shape_of(r) for r in refs[:3])
        lead = _numel(q[:-2])
        return lead * int(q[-2]) * int(k[-2]) * (int(q[-1]) + int(v[-1]))
    return 0


def count_macs(g: Graph, shape_of: ShapeFn | None = None) -> int:
    shape_of = shape_of or (lambda n: g.values[n].shape)
    return sum(node_macs(n, shape_of) for n in g.nodes)


def _onnx_macs(op: str, n: Node, refs: list[str], out: tuple, shape_of: ShapeFn) -> int:
    if op == "Conv":
        return _numel(out) * _numel(shape_of(refs[1])[1:])
    if op == "ConvTranspose":
        return _numel(shape_of(refs[0])) * _numel(shape_of(refs[1])[1:])
    if op == "Gemm":
        a = shape_of(refs[0])
        return _numel(out) * int(a[0] if n.kwargs.get("transA", 0) else a[-1])
    if op == "MatMul":
        a = shape_of(refs[0])
        return _numel(out) * int(a[-1])
    return 0


def _recurrent_macs(n: Node, refs: list[str], shape_of: ShapeFn) -> int:
    """Every step multiplies each weight matrix by one vector per sequence: steps x batch
    x the matrices' sizes (ONNX stacks the directions in one tensor, torch keeps them apart)."""
    x = shape_of(refs[0])
    steps_batch = _numel(x[:-1])
    if n.op.startswith("onnx."):
        mats = [shape_of(r.name) for r in n.args[1:3] if r is not None]
    else:
        mats = [shape_of(r.name) for r in n.args[2] if len(shape_of(r.name)) == 2]
    return steps_batch * sum(_numel(m) for m in mats)
