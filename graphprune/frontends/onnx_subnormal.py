"""Weights below float32's normal range set to zero, so no kernel computes with subnormal numbers.

Training with weight decay can leave dead channels whose weights decayed into the subnormal
range (|w| < 1.2e-38): PP-OCRv6's small text detector has 256k of them, 185k of one 1x1
convolution's 295k weights. x86 processors take a slow microcode path for every arithmetic
operation on a subnormal operand, so that single convolution ran for 174 ms of the model's 362 ms
(docs/runtime.md). Pruning removes such channels first, which made pruning look several times
better than the MACs it removed; flushing them to zero gives the original the same speed, so the
pruning's own part is measured against it.

Not bit-exact, and needs no exactness: a product with a subnormal weight is below 1.2e-38 times
the activation, far below any float32 result it is added to; the program's output check compares
the flushed model with the file as given and takes the file back if they differ. Initializers the
graph also lists as inputs (a caller may feed them) are left alone.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

# the dtypes whose subnormals run slowly on x86 (float16 is computed in float32 on CPUs)
_FLUSHED = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64}


def _flush(tensor: onnx.TensorProto) -> int:
    """Zero ``tensor``'s subnormal values in place; how many there were."""
    dtype = _FLUSHED.get(tensor.data_type)
    if dtype is None:
        return 0
    arr = numpy_helper.to_array(tensor)
    sub = (arr != 0) & (np.abs(arr) < np.finfo(dtype).tiny)
    count = int(sub.sum())
    if count:
        tensor.CopyFrom(numpy_helper.from_array(np.where(sub, dtype(0), arr).astype(dtype), tensor.name))
    return count


def flush_subnormal_weights(model: onnx.ModelProto) -> tuple[int, int]:
    """Set the subnormal values of ``model``'s float32/float64 initializers and Constant tensors
    (main graph) to zero, in place. Returns (values zeroed, tensors that held any)."""
    fed = {i.name for i in model.graph.input}
    values = tensors = 0
    targets = [t for t in model.graph.initializer if t.name not in fed]
    constants = [n for n in model.graph.node if n.op_type == "Constant" and n.domain in ("", "ai.onnx")]
    targets += [a.t for n in constants for a in n.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR]
    for t in targets:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            continue  # data still on disk (a model loaded without its external data): not read here
        n = _flush(t)
        values += n
        tensors += bool(n)
    tiny = float(np.finfo(np.float32).tiny)
    for a in (a for n in constants for a in n.attribute if a.name in ("value_float", "value_floats")):
        floats = [a.f] if a.name == "value_float" else list(a.floats)
        n = sum(1 for f in floats if 0 < abs(f) < tiny)
        if n:
            if a.name == "value_float":
                a.f = 0.0
            else:
                a.floats[:] = [0.0 if 0 < abs(f) < tiny else f for f in floats]
            values += n
            tensors += 1
    return values, tensors
