"""Shared fills split per reader, before the ONNX analysis (graphprune/frontends/onnx_lower.py).

Plain onnx (no torch): the model is changed in place, before it is lowered.
"""
from __future__ import annotations

import onnx
from onnx import numpy_helper

FILL_COPY = "__gp_fill"  # the name of a shared fill's copy: a constant, not counted among the file's parameters


def split_shared_fills(model: onnx.ModelProto) -> int:
    """A float initializer of one repeated value (ones, zeros) that several nodes read becomes one copy
    per reader: the exporter shares one such fill between unrelated layers (torch's GroupNorm as Reshape,
    InstanceNormalization and a ones/zeros affine of 64 rows, read by four norms of a UNet), and one
    tensor would tie the channels of every layer reading it. A tied weight of distinct values stays one.
    Returns the number of copies made."""
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for n in model.graph.node:
        for k, name in enumerate(n.input):
            readers.setdefault(name, []).append((n, k))
    outputs = {o.name for o in model.graph.output}
    made = 0
    for t in list(model.graph.initializer):
        uses = readers.get(t.name, [])
        if len(uses) < 2 or t.name in outputs or t.data_location == onnx.TensorProto.EXTERNAL or \
                t.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
            continue
        values = numpy_helper.to_array(t)
        if values.size < 2 or not (values == values.flat[0]).all():
            continue
        for i, (node, k) in enumerate(uses[1:], 1):
            copy = onnx.TensorProto()
            copy.CopyFrom(t)
            copy.name = f"{t.name}{FILL_COPY}{i}"
            model.graph.initializer.append(copy)
            node.input[k] = copy.name
            made += 1
    return made
