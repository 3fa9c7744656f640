"""A Softmax behind a Transpose moved ahead of it, where onnxruntime then runs it without a slow transpose.

onnxruntime computes a Softmax (from opset 13: along one axis) on the last axis only; for any
other axis it transposes that axis with the last one, computes, and transposes back. An adjacent
swap (the axis second to last) takes a fast path; any other swap is a general permutation, several
times slower. YOLOv8's distribution-focal head (``Reshape(b, 4, 16, A) -> Transpose(0, 2, 1, 3) ->
Softmax(axis=1)``) pays that on every run: 1.1 ms of a 12.8 ms nudenet run at 320x320, two threads (docs/runtime.md),
the same in the original and in any pruned model, so it also caps what pruning can save.

The rewrite is exact: a softmax normalises each line along its axis, and a transpose only moves
the lines, so ``Softmax(Transpose(x, p), axis=k) == Transpose(Softmax(x, axis=p[k]), p)``, bit for bit.
It is made only where it lowers the cost class of the softmax's own transpose (last axis: none;
second to last: an adjacent swap; else a general permutation), which every shape measured confirmed
(722 cases over ranks 2-5: every move it makes 1.00x to 20x as fast, every move it refuses
slower; tools/bench_softmax.py). LogSoftmax is the same. Before opset 13 a
Softmax flattens all axes from ``axis`` on, so those are left alone.
"""
from __future__ import annotations

import onnx
from onnx import helper

from .onnx_fuse import GraphIndex, default_opset, drop_value_info, fresh_name, names_in

SOFTMAXES = ("Softmax", "LogSoftmax")


def _transpose_cost(axis: int, rank: int) -> int:
    """onnxruntime's cost class for a softmax along ``axis``: 0 none, 1 an adjacent swap, 2 a permutation."""
    return 0 if axis == rank - 1 else 1 if axis == rank - 2 else 2


def _perm(node: onnx.NodeProto) -> list[int] | None:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)


def softmax_ahead_of_transpose(model: onnx.ModelProto) -> list[str]:
    """Move each Softmax/LogSoftmax that reads a Transpose (its only reader) ahead of it where that
    is cheaper on onnxruntime (module doc), in ``model``'s main graph, in place. Returns the names
    of the softmaxes moved. The softmax's output name is kept, by the transpose now after it."""
    if default_opset(model) < 13:
        return []
    ix = GraphIndex(model)
    nodes = list(model.graph.node)
    pos = {id(n): k for k, n in enumerate(nodes)}
    taken = names_in(model.graph)
    moved, stale = [], set()
    for soft in nodes:
        if soft.op_type not in SOFTMAXES or soft.domain not in ("", "ai.onnx"):
            continue
        tr = ix.op(soft.input[0], "Transpose")
        perm = None if tr is None else _perm(tr)
        if not perm:  # a Transpose without perm reverses the axes: rare, and its rank unknown here
            continue
        axis = next((a.i for a in soft.attribute if a.name == "axis"), -1)
        rank = len(perm)
        if not -rank <= axis < rank:
            continue
        axis %= rank
        if _transpose_cost(perm[axis], rank) >= _transpose_cost(axis, rank):
            continue
        name = soft.name or fresh_name(soft.output[0], taken)
        mid = fresh_name(f"{name}_ahead", taken)
        ahead = helper.make_node(soft.op_type, [tr.input[0]], [mid], name=name, axis=perm[axis])
        after = helper.make_node("Transpose", [mid], [soft.output[0]], name=tr.name or fresh_name(mid + "_t", taken),
                                 perm=perm)
        # the softmax takes the transpose's place (its input is ready there); the transpose the softmax's
        nodes[pos[id(tr)]], nodes[pos[id(soft)]] = ahead, after
        stale.add(tr.output[0])
        moved.append(name)
    if moved:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        drop_value_info(model, stale)  # the old transposed value is gone
    return moved
