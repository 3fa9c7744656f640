"""A Mul or Add by a scalar constant beside a convolution, folded into its weights and bias.

PP-LCNetV3 (the backbone of PP-OCRv4's detector) scales and shifts every convolution's output and
every hard-swish's by a learnt scalar pair (its "learnable affine block", ``Mul(s) -> Add(b)``).
onnxruntime folds none of these: it runs each as a separate pass over the whole feature map, out of
its blocked layout, with a reorder before and after. They cost the same in the original and any
pruned model, so they also capped what pruning could save (docs/runtime.md, fourteenth pass).

Two exact identities (equal up to float rounding; the program's output check compares the result
with the file as given and takes the file back if they differ):

- after a convolution (or a transposed one): ``s * conv(x, W, c) + b == conv(x, s W, s c + b)``;
- before a convolution: ``conv(s x, W, c) == conv(x, s W, c)`` (its zero padding stays zero), and
  ``conv(x + b, W, c) == conv(x, W, c + b sum(W))`` where it pads nothing (a padded border would
  see the zero, not ``b``).

Folded only where the affine op's value has no other reader (ahead of a convolution: only on a value
in onnxruntime's blocked layout, see :data:`BLOCKED`), and the convolution's weights and
bias are initializers nothing else reads (a shared weight would change another layer), float32 or
float16. What does not fold (before a padded convolution, after an activation read twice) is
written as one per-channel op by frontends/onnx_channel_affine.py.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .onnx_fuse import GraphIndex, drop_unused_constants, drop_value_info, fresh_name, names_in

_FOLDED = ("Mul", "Add")
SCALAR_STEPS = ("Mul", "Add", "Sub", "Div")  # ops that are affine in one operand given a scalar other
# Ops onnxruntime's CPU provider runs in its blocked channel layout (its NCHWc transformer). A scalar
# affine op is rewritten only on such a value: elsewhere it gains nothing, and the ops around it may
# be a pattern onnxruntime fuses itself (GELU's Div -> Erf -> Add -> Mul -> Mul(0.5), an attention's
# scaling after a Reshape), which the rewrite would break (PP-OCRv6 rec ran 0.86x as fast).
BLOCKED = frozenset({"Conv", "ConvTranspose", "Relu", "LeakyRelu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid",
                     "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization",
                     "Resize", "Upsample", "Concat"})


def _own_initializer(ix: GraphIndex, name: str) -> onnx.TensorProto | None:
    """``name``'s initializer where only one node reads it, it is not a graph input and its data is loaded."""
    t = ix.inits.get(name)
    ok = t is not None and name not in ix.fed and ix.users.get(name, 0) == 1 \
        and t.data_location != onnx.TensorProto.EXTERNAL and t.data_type in (onnx.TensorProto.FLOAT,
                                                                             onnx.TensorProto.FLOAT16)
    return t if ok else None


def scalar_operand(ix: GraphIndex, node: onnx.NodeProto) -> tuple[int, float] | None:
    """For a Mul/Add of the default domain with one operand a scalar constant: (the other operand's
    index, the scalar)."""
    if node.op_type not in _FOLDED or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
        return None
    for k in (0, 1):
        value = ix.scalar(node.input[1 - k], node.input[k])
        if value is not None:
            return k, value
    return None


def in_blocked_layout(ix: GraphIndex, name: str, depth: int = 6) -> bool:
    """Whether ``name`` comes from an op of :data:`BLOCKED`, through scalar Mul/Add/Sub/Div steps and
    elementwise Mul/Add/Sum whose every non-constant operand does (``x * hard_sigmoid(x)``)."""
    node = ix.producer.get(name)
    if node is None or depth == 0 or node.domain not in ("", "ai.onnx"):
        return False
    if node.op_type in BLOCKED:
        return True
    if node.op_type not in (*SCALAR_STEPS, "Sum"):
        return False
    tensors = [i for i in node.input if i and i not in ix.inits and ix.scalar(i) is None
               and getattr(ix.producer.get(i), "op_type", None) != "Constant"]
    return bool(tensors) and all(in_blocked_layout(ix, i, depth - 1) for i in tensors)


def _weights(model: onnx.ModelProto, ix: GraphIndex, conv: onnx.NodeProto, taken: set[str]):
    """(weight initializer, its array, bias array, a setter for the bias) or None where not own."""
    has_bias = len(conv.input) > 2 and bool(conv.input[2])
    weight = _own_initializer(ix, conv.input[1])
    bias = _own_initializer(ix, conv.input[2]) if has_bias else None
    if weight is None or (has_bias and bias is None) or (bias is None and model.ir_version < 4):
        return None  # before IR 4 a new bias initializer would also have to be a graph input
    w = numpy_helper.to_array(weight)
    outputs = w.shape[0] if conv.op_type == "Conv" else w.shape[1] * next(
        (a.i for a in conv.attribute if a.name == "group"), 1)  # ConvTranspose: (in, out / group, ...)
    b = numpy_helper.to_array(bias) if bias is not None else np.zeros(outputs, w.dtype)

    def set_bias(new: np.ndarray) -> None:
        new = new.astype(w.dtype)
        if bias is not None:
            bias.CopyFrom(numpy_helper.from_array(new, bias.name))
            return
        name = fresh_name(f"{conv.name or weight.name}_bias", taken)
        model.graph.initializer.append(numpy_helper.from_array(new, name))
        del conv.input[2:]
        conv.input.append(name)
    return weight, w, b, set_bias


def _fold_back(model, ix, node, k, value, taken, touched) -> str | None:
    """Fold ``node`` into the (transposed) convolution producing its operand ``k``; returns the
    convolution's old output name (None where nothing folds)."""
    x = node.input[k]
    conv = ix.op(x, "Conv") or ix.op(x, "ConvTranspose")
    found = None if conv is None or id(conv) in touched else _weights(model, ix, conv, taken)
    if found is None:
        return None
    weight, w, b, set_bias = found
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused in _write
        new_w = (w.astype(np.float64) * value).astype(w.dtype) if node.op_type == "Mul" else w
        new_b = (b.astype(np.float64) * value if node.op_type == "Mul" else b.astype(np.float64) + value).astype(w.dtype)
    if not _write(weight, new_w, new_b, set_bias):
        return None
    conv.output[0] = node.output[0]  # the convolution now gives what the affine op gave
    touched.add(id(conv))
    return x


def _write(weight: onnx.TensorProto, new_w: np.ndarray, new_b: np.ndarray | None, set_bias) -> bool:
    """Store the folded weights (and bias, unless None) where all are finite (a float16 weight
    times 100 can overflow); False, changing nothing, where not."""
    if not np.isfinite(new_w).all() or (new_b is not None and not np.isfinite(new_b).all()):
        return False
    weight.CopyFrom(numpy_helper.from_array(new_w, weight.name))
    if new_b is not None:
        set_bias(new_b)
    return True


def _pads_nothing(conv: onnx.NodeProto) -> bool:
    attrs = {a.name: a for a in conv.attribute}
    auto = attrs["auto_pad"].s.decode() if "auto_pad" in attrs else "NOTSET"
    return auto == "VALID" or (auto == "NOTSET" and not any(attrs["pads"].ints if "pads" in attrs else ()))


def _fold_ahead(model, ix, node, k, value, taken, touched, readers) -> str | None:
    """Fold ``node`` into the convolution that alone reads its output, as that convolution's data
    input; returns ``node``'s output name (None where nothing folds)."""
    y, x = node.output[0], node.input[k]
    conv = readers.get(y)
    if conv is None or ix.users.get(y, 0) != 1 or conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx") \
            or id(conv) in touched or list(conv.input).count(y) != 1 or conv.input[0] != y \
            or x in ix.inits or (node.op_type == "Add" and not _pads_nothing(conv)) or not in_blocked_layout(ix, x):
        return None
    found = _weights(model, ix, conv, taken)
    if found is None:
        return None
    weight, w, b, set_bias = found
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused in _write
        if node.op_type == "Mul":
            new_w, new_b = (w.astype(np.float64) * value).astype(w.dtype), None  # the bias stays
        else:
            shift = value * w.astype(np.float64).reshape(w.shape[0], -1).sum(axis=1)
            new_w, new_b = w, (b.astype(np.float64) + shift).astype(w.dtype)
    if not _write(weight, new_w, new_b, set_bias):
        return None
    conv.input[0] = x
    touched.add(id(conv))
    return y


def fold_conv_affine(model: onnx.ModelProto) -> list[str]:
    """Fold every Mul/Add by a scalar constant into the convolution before or after it (module doc),
    in ``model``'s main graph, in place; chains fold whole, over passes (each convolution changes
    once a pass). Returns the names (or output names) of the ops folded."""
    folded: list[str] = []
    stale: set[str] = set()  # values no node gives any more
    taken = names_in(model.graph)
    while True:
        ix = GraphIndex(model)
        readers = {i: n for n in model.graph.node for i in n.input}  # the sole reader where users == 1
        gone, touched = [], set()
        for n in list(model.graph.node):
            found = scalar_operand(ix, n)
            if found is None:
                continue
            old = _fold_back(model, ix, n, *found, taken, touched) or \
                _fold_ahead(model, ix, n, *found, taken, touched, readers)
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
