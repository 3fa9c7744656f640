"""A Mul or Add by a scalar constant right after a convolution, folded into its weights and bias.

PP-LCNetV3 (the backbone of PP-OCRv4's detector) scales and shifts every convolution's output by
a learnt scalar pair (its "learnable affine block", ``Mul(s) -> Add(b)``). onnxruntime does not
fold these into the convolution: it runs each as a separate pass over the whole feature map, out
of its blocked layout, with a reorder before and after. Removing the 56 that follow a convolution
made the detector 1.20x-1.23x faster (docs/runtime.md, fourteenth pass), the same in the original
and any pruned model, so they also capped what pruning could save.

``s * conv(x, W, c) + b == conv(x, s * W, s * c + b)``: the same function, equal up to float
rounding (the program's output check compares the result with the file as given and takes the
file back if they differ). Folded only where the convolution's output has no other reader and its
weights and bias are initializers nothing else reads (a shared weight would change another layer),
with float32/float16 weights.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .onnx_fuse import GraphIndex, drop_unused_constants, drop_value_info, fresh_name, names_in

_FOLDED = ("Mul", "Add")


def _own_initializer(ix: GraphIndex, name: str) -> onnx.TensorProto | None:
    """``name``'s initializer where only one node reads it, it is not a graph input and its data is loaded."""
    t = ix.inits.get(name)
    ok = t is not None and name not in ix.fed and ix.users.get(name, 0) == 1 \
        and t.data_location != onnx.TensorProto.EXTERNAL and t.data_type in (onnx.TensorProto.FLOAT,
                                                                             onnx.TensorProto.FLOAT16)
    return t if ok else None


def _fold_one(model: onnx.ModelProto, ix: GraphIndex, node: onnx.NodeProto, taken: set[str]) -> str | None:
    """Fold ``node`` (a Mul/Add, one input a scalar) into the Conv that produces its other input;
    returns the Conv's old output name (None where nothing folds)."""
    for k in (0, 1):
        x, c = node.input[k], node.input[1 - k]
        conv = ix.op(x, "Conv")
        value = None if conv is None else ix.scalar(c, x)
        if value is not None:
            break
    else:
        return None
    has_bias = len(conv.input) > 2 and bool(conv.input[2])
    weight = _own_initializer(ix, conv.input[1])
    bias = _own_initializer(ix, conv.input[2]) if has_bias else None
    if weight is None or (has_bias and bias is None):
        return None
    w = numpy_helper.to_array(weight)
    b = numpy_helper.to_array(bias) if bias is not None else np.zeros(w.shape[0], w.dtype)
    if node.op_type == "Mul":
        weight.CopyFrom(numpy_helper.from_array((w.astype(np.float64) * value).astype(w.dtype), weight.name))
        b = (b.astype(np.float64) * value).astype(w.dtype)
    else:
        b = (b.astype(np.float64) + value).astype(w.dtype)
    if bias is None:
        name = fresh_name(f"{conv.name or weight.name}_bias", taken)
        model.graph.initializer.append(numpy_helper.from_array(b, name))
        del conv.input[2:]
        conv.input.append(name)
    else:
        bias.CopyFrom(numpy_helper.from_array(b, bias.name))
    conv.output[0] = node.output[0]  # the convolution now gives what the affine op gave
    return x


def fold_conv_affine(model: onnx.ModelProto) -> list[str]:
    """Fold every Mul/Add by a scalar constant that reads a convolution's output (its only reader)
    into that convolution (module doc), in ``model``'s main graph, in place; a chain ``Conv -> Mul ->
    Add`` folds whole. Returns the names (or output names) of the ops folded."""
    folded: list[str] = []
    stale: set[str] = set()  # the convolutions' old outputs
    taken = names_in(model.graph)
    while True:
        ix = GraphIndex(model)
        gone = []
        for n in list(model.graph.node):
            if n.op_type in _FOLDED and n.domain in ("", "ai.onnx") and len(n.input) == 2:
                old = _fold_one(model, ix, n, taken)
                if old is not None:
                    gone.append(n)
                    stale.add(old)
        if not gone:
            break
        folded += [n.name or n.output[0] for n in gone]
        drop = {id(n) for n in gone}
        keep = [n for n in model.graph.node if id(n) not in drop]
        del model.graph.node[:]
        model.graph.node.extend(keep)
        drop_unused_constants(model, {i for n in gone for i in n.input})  # the scalars nothing reads now
    drop_value_info(model, stale)
    return folded
