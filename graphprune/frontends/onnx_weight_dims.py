"""Dynamic input dims that a weight fixes: the feature width of a recording a converter declared dynamic.

madmom's converter declares its networks' input ``[input_dim_0, input_dim_1]``: the frames and the features. The
features can take one size only, the width of the first layer's weight, but a graph analysed at a guessed size
(1, then 32 to 640) met that weight as "cannot tie dims of sizes 640 and 266". Followed from the input through ops
that keep the dim (unary elementwise ops, Unsqueeze, Transpose), the first MatMul, Gemm, Conv or recurrence whose
weight is an initializer says the size.
"""
from __future__ import annotations

import onnx
from onnx import numpy_helper

# ops whose output dim k is their first input's dim k (one input read, or others broadcast against it)
_SAME = frozenset({"Identity", "Cast", "Relu", "LeakyRelu", "Tanh", "Sigmoid", "Elu", "Selu", "Softplus", "Abs", "Neg",
                   "Exp", "Log", "Sqrt", "Clip", "Dropout", "HardSigmoid", "HardSwish", "Erf", "Gelu", "Mish"})
_RECURRENT = frozenset({"LSTM", "GRU", "RNN"})
_BINARY = frozenset({"Add", "Sub", "Mul", "Div"})  # an initializer operand's dim > 1 fixes the one it meets
_STEPS = 32  # ops followed from an input before giving up: the first layer is near it


def _ints(model: onnx.ModelProto, node: onnx.NodeProto, inits: dict) -> list[int] | None:
    """Unsqueeze's axes (an attribute before opset 13, an initializer after)."""
    for a in node.attribute:
        if a.name == "axes":
            return list(a.ints)
    if len(node.input) > 1 and node.input[1] in inits:
        return [int(x) for x in numpy_helper.to_array(inits[node.input[1]]).reshape(-1)]
    return None


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _fixed_by(node: onnx.NodeProto, position: int, axis: int, rank: int, shapes: dict) -> int | None:
    """The size ``node``'s weight gives its input ``position``'s dim ``axis`` (of ``rank``), or None."""
    weight = lambda i: shapes.get(node.input[i]) if len(node.input) > i else None  # noqa: E731
    if node.op_type == "MatMul" and position == 0 and axis == rank - 1 and weight(1) and len(weight(1)) >= 2:
        return weight(1)[-2]
    if node.op_type == "Gemm" and position == 0 and weight(1) and len(weight(1)) == 2:
        if axis == (0 if _attr(node, "transA", 0) else 1):
            return weight(1)[1 if _attr(node, "transB", 0) else 0]
    if node.op_type == "Conv" and position == 0 and axis == 1 and weight(1) and len(weight(1)) >= 3:
        return weight(1)[1] * _attr(node, "group", 1)
    if node.op_type in _RECURRENT and position == 0 and axis == rank - 1 and weight(1) and len(weight(1)) == 3:
        return weight(1)[2]
    if node.op_type in _BINARY and position in (0, 1) and (other := weight(1 - position)):
        j = axis - rank + len(other)  # broadcasting aligns dims from the right
        return other[j] if j >= 0 and other[j] > 1 else None
    if node.op_type == "LayerNormalization" and position == 0 and axis == rank - 1 and weight(1):
        return weight(1)[-1]
    if node.op_type in ("BatchNormalization", "InstanceNormalization") and position == 0 and axis == 1 and weight(1):
        return weight(1)[0]
    return None


def _follow(model: onnx.ModelProto, name: str, axis: int, rank: int, inits: dict, shapes: dict,
            users: dict[str, list[onnx.NodeProto]]) -> int | None:
    todo, steps = [(name, axis, rank)], 0
    while todo and steps < _STEPS:
        value, axis, rank = todo.pop(0)
        for node in users.get(value, []):
            steps += 1
            position = list(node.input).index(value)
            size = _fixed_by(node, position, axis, rank, shapes)
            if size is not None:
                return size
            if position != 0 or not node.output:
                continue  # (a binary op's second operand flows on too rarely to follow)
            if node.op_type in _SAME:
                todo.append((node.output[0], axis, rank))
            elif node.op_type in _BINARY and (other := shapes.get(node.input[1])) is not None:
                todo.append((node.output[0], axis + max(0, len(other) - rank), max(rank, len(other))))
            elif node.op_type == "Unsqueeze" and (axes := _ints(model, node, inits)) is not None:
                out_rank = rank + len(axes)
                for a in sorted(x % out_rank for x in axes):
                    axis += a <= axis
                todo.append((node.output[0], axis, out_rank))
            elif node.op_type == "Transpose":
                perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), list(range(rank))[::-1])
                todo.append((node.output[0], perm.index(axis), rank))
    return None


def weight_dims(model: onnx.ModelProto) -> dict[str, dict[int, int]]:
    """{input: {dim: size}} for dynamic dims past the batch that a weight fixes."""
    inits = {i.name: i for i in model.graph.initializer}
    wanted = [(vi.name, k, len(vi.type.tensor_type.shape.dim)) for vi in model.graph.input
              if vi.name not in inits and vi.type.HasField("tensor_type")
              for k, d in enumerate(vi.type.tensor_type.shape.dim) if k and not (d.HasField("dim_value") and d.dim_value > 0)]
    if not wanted:  # every dim past the batch declared: nothing to walk (input_dims asks on every call)
        return {}
    shapes = {name: tuple(t.dims) for name, t in inits.items()}
    users: dict[str, list[onnx.NodeProto]] = {}  # one map for every walk
    for node in model.graph.node:
        for i in node.input:
            users.setdefault(i, []).append(node)
    out: dict[str, dict[int, int]] = {}
    for name, k, rank in wanted:
        size = _follow(model, name, k, rank, inits, shapes, users)
        if size:
            out.setdefault(name, {})[k] = int(size)
    return out
