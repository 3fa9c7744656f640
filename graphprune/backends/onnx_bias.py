"""Biases for the layers compensation fitted one to (``add_bias=True``), written into an ONNX graph."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..planning.plan import keep_masks


def add_biases(model: onnx.ModelProto, dg, plan, comp) -> int:
    """Give the sites compensation fitted a bias for one (sliced to their kept outputs): Conv's B
    and Gemm's C as a third input, an Add after a MatMul. Returns the parameters added."""

    if not comp.new_biases:
        return 0
    masks = keep_masks(dg, plan)
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}
    taken = {i.name for i in g.initializer} | {o for n in g.node for o in n.output} | {i.name for i in g.input}
    after: dict[int, onnx.NodeProto] = {}
    added = 0
    for node, (out_value, b) in sorted(comp.new_biases.items()):
        n = producer[out_value]
        dim = 1 if n.op_type == "Conv" else dg.ir.values[out_value].rank - 1
        b = b.detach().cpu().numpy() if hasattr(b, "detach") else np.asarray(b)
        keep = masks.get((out_value, dim))
        if keep is not None:
            b = b[np.flatnonzero(keep)]
        w = inits.get(n.input[1])
        dtype = onnx.helper.tensor_dtype_to_np_dtype(w.data_type) if w is not None else np.float32
        name = f"{out_value}__gp_bias"
        while name in taken:
            name += "_"
        taken.add(name)
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(b.astype(dtype)), name))
        if n.op_type in ("Conv", "Gemm"):
            n.input.append(name)
        else:  # MatMul has no bias input: y = Add(MatMul(x, W), b), under the old output name
            inner = f"{out_value}__gp_nobias"
            n.output[0] = inner
            after[id(n)] = onnx.helper.make_node("Add", [inner, name], [out_value], name=f"{node}__gp_bias_add")
        comp.bias_modules.append(node)
        added += int(b.size)
    if after:
        ordered = []
        for n in g.node:
            ordered.append(n)
            if id(n) in after:
                ordered.append(after[id(n)])
        del g.node[:]
        g.node.extend(ordered)
    return added
