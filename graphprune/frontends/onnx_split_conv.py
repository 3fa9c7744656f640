"""A Split of a convolution's activated output written as one convolution per piece.

YOLOv5/v8/v11's C3/C2f blocks split a convolution's activated output in two along the channels.
onnxruntime keeps a convolution's output in its blocked channel layout (NCHWc) but has no blocked
Split: it converts the whole map out of the layout before the split, each piece back before the
convolution that reads it, and the Add and Concat that join the pieces again run outside the layout,
with more conversions after them. On nudenet's YOLOv8n at 320x320 the eight C2f splits cost 36 of its
44 conversions; written as convolutions it runs 1.04x-1.09x faster (docs/runtime.md, "Splits written as
convolutions"), the original as much as any pruned model.

The rewrite is exact: output channel j of a convolution depends on row j of its weights and entry j
of its bias alone, and an activation acts on each element alone, so
``Split(act(Conv(x, W, b)), sizes)[p] == act(Conv(x, W[p], b[p]))`` for each piece p of channels.
Made only where every op between the convolution and the Split acts elementwise (activations, and
Mul/Add/Sub/Div of two such values or of one and a scalar constant, as ``x * sigmoid(x)``) or per
channel with constant parameters (BatchNormalization, sliced with the weights), and where nothing else
reads the convolution's output or any value between it and the Split, and only where a convolution
reads a piece: a detector head's Split into scores and boxes goes on to Reshapes outside the layout,
and PicoDet's four ran 0-3% slower written as two convolutions each. A piece nobody reads is not
computed at all.
"""
from __future__ import annotations

import onnx
from onnx import helper, numpy_helper

from .onnx_fuse import GraphIndex, default_opset, drop_unused_constants, drop_value_info, fresh_name, names_in

# Ops that act on each element alone, whatever their attributes; Clip's bounds must be scalars.
ELEMENTWISE = frozenset({"Relu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Celu",
                         "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Exp", "Neg", "Abs", "Identity", "Clip"})
BINARY = frozenset({"Mul", "Add", "Sub", "Div"})
_MAX_CHAIN = 12  # a C2f's SiLU is two ops; longer chains are not an activation


def _chain(ix: GraphIndex, start: str, order: list[onnx.NodeProto]) -> tuple[onnx.NodeProto, list[onnx.NodeProto]] | None:
    """The convolution ``start`` is computed from and the ops between them (not the convolution), or
    None where an op is not elementwise or per-channel, or a value is read outside the chain."""
    nodes: dict[int, onnx.NodeProto] = {}
    reads: dict[str, int] = {}  # value -> reads by chain nodes
    todo, conv = [start], None
    while todo:
        name = todo.pop()
        node = ix.producer.get(name)
        if node is None or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
            return None
        if id(node) in nodes or node is conv:
            continue
        if node.op_type == "Conv":
            if conv is not None:
                return None
            conv = node
            continue
        tensors = _operands(ix, node)
        if tensors is None or len(nodes) == _MAX_CHAIN:
            return None
        nodes[id(node)] = node
        for t in tensors:
            reads[t] = reads.get(t, 0) + 1
            todo.append(t)
    if conv is None:
        return None
    if any(ix.users.get(v, 0) != k for v, k in reads.items()):  # read elsewhere too: the full value is needed
        return None
    return conv, [n for n in order if id(n) in nodes]


def _operands(ix: GraphIndex, node: onnx.NodeProto) -> list[str] | None:
    """The non-constant inputs of an elementwise or per-channel ``node``; None where it is neither."""
    op = node.op_type
    if op in ELEMENTWISE:
        if op == "Clip" and any(i and ix.scalar(i) is None for i in node.input[1:]):
            return None
        return [node.input[0]]
    if op in BINARY and len(node.input) == 2:
        scalar = [ix.scalar(i) is not None for i in node.input]
        return [i for i, s in zip(node.input, scalar) if not s] if not all(scalar) else None
    if op == "BatchNormalization" and len(node.output) == 1 and all(
            (a := ix.constant(i)) is not None and a.ndim == 1 for i in node.input[1:5]):
        return [node.input[0]]
    return None


def _sizes(ix: GraphIndex, split: onnx.NodeProto, channels: int, opset: int) -> list[int] | None:
    attrs = {a.name: a for a in split.attribute}
    given = None
    if opset >= 13 and len(split.input) > 1 and split.input[1]:
        arr = ix.constant(split.input[1])
        given = None if arr is None else arr.reshape(-1).tolist()
        if given is None:
            return None
    elif "split" in attrs:
        given = list(attrs["split"].ints)
    n = len(split.output)
    if given is None:  # equal pieces; from opset 18 the last may be smaller (num_outputs)
        size = -(-channels // n)
        given = [size] * (n - 1) + [channels - size * (n - 1)] if channels % n == 0 or opset >= 18 else None
    if given is None or len(given) != n or sum(given) != channels or min(given) < 0:
        return None
    return [int(s) for s in given]


def _axis_is_channels(ix: GraphIndex, split: onnx.NodeProto) -> bool:
    axis = next((a.i for a in split.attribute if a.name == "axis"), 0)
    return axis == 1 or (axis < 0 and axis + ix.ranks.get(split.input[0], 0) == 1)


def _piece(model, ix, conv, chain, begin, end, out, taken) -> list[onnx.NodeProto]:
    """The convolution and chain for channels [begin, end), the last node writing ``out``."""
    base = conv.name or conv.output[0]
    inputs = [conv.input[0]]
    for name in conv.input[1:3]:
        if not name:
            continue
        piece = fresh_name(f"{name}_{begin}_{end}", taken)
        model.graph.initializer.append(numpy_helper.from_array(ix.constant(name)[begin:end], piece))
        inputs.append(piece)
    renamed = {conv.output[0]: fresh_name(f"{conv.output[0]}_{begin}_{end}", taken)}
    nodes = [helper.make_node("Conv", inputs, [renamed[conv.output[0]]], name=fresh_name(f"{base}_{begin}_{end}", taken))]
    nodes[0].attribute.extend(conv.attribute)
    for k, node in enumerate(chain):
        y = out if k == len(chain) - 1 else fresh_name(f"{node.output[0]}_{begin}_{end}", taken)
        ins = [renamed.get(i, i) for i in node.input]
        if node.op_type == "BatchNormalization":
            for j in range(1, 5):
                ins[j] = fresh_name(f"{node.input[j]}_{begin}_{end}", taken)
                model.graph.initializer.append(numpy_helper.from_array(ix.constant(node.input[j])[begin:end], ins[j]))
        new = helper.make_node(node.op_type, ins, [y], name=fresh_name(f"{node.name or node.output[0]}_{begin}_{end}", taken))
        new.attribute.extend(node.attribute)
        nodes.append(new)
        renamed[node.output[0]] = y
    if not chain:  # the Split read the convolution itself
        nodes[0].output[0] = out
    return nodes


def split_conv_pieces(model: onnx.ModelProto) -> list[str]:
    """Write each Split along the channels of a convolution's activated output as one convolution
    (and activation) per piece (module doc), in ``model``'s main graph, in place. Returns the names
    of the Splits rewritten."""
    if model.ir_version < 4:  # new initializers would also have to be graph inputs
        return []
    ix = GraphIndex(model)
    order = list(model.graph.node)
    opset = default_opset(model)
    taken = names_in(model.graph)
    conv_reads = {i for n in order if n.op_type == "Conv" for i in n.input[:1]}
    replaced: dict[int, list[onnx.NodeProto]] = {}
    dropped: set[int] = set()
    done: list[str] = []
    for split in order:
        if split.op_type != "Split" or split.domain not in ("", "ai.onnx") or not _axis_is_channels(ix, split) \
                or ix.users.get(split.input[0], 0) != 1 or not conv_reads.intersection(split.output):
            continue
        found = _chain(ix, split.input[0], order)
        if found is None:
            continue
        conv, chain = found
        attrs = {a.name: a for a in conv.attribute}
        w = ix.constant(conv.input[1]) if len(conv.input) > 1 else None
        b_ok = len(conv.input) < 3 or not conv.input[2] or ix.constant(conv.input[2]) is not None
        if (attrs["group"].i if "group" in attrs else 1) != 1 or w is None or not b_ok:
            continue
        sizes = _sizes(ix, split, w.shape[0], opset)
        if sizes is None:
            continue
        pieces, begin = [], 0
        for size, out in zip(sizes, split.output):
            if out and ix.users.get(out, 0):  # a piece nobody reads is not computed
                pieces += _piece(model, ix, conv, chain, begin, begin + size, out, taken)
            begin += size
        replaced[id(split)] = pieces
        dropped |= {id(conv), *(id(n) for n in chain)}
        done.append(split.name or split.output[0])
    if not done:
        return []
    old = [n for n in model.graph.node if id(n) in dropped or id(n) in replaced]
    out: list[onnx.NodeProto] = []
    for n in model.graph.node:
        if id(n) not in dropped:
            out.extend(replaced.get(id(n), [n]))
    del model.graph.node[:]
    model.graph.node.extend(out)
    drop_unused_constants(model, {i for n in old for i in n.input})
    drop_value_info(model, {o for n in old for o in n.output})
    return done
