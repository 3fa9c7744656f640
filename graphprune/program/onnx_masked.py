"""Copies of an ONNX model the program runs: with weights replaced (a scoring variant, a refit),
and with the pruned positions zeroed (the masked original the oracle compares against)."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from .base import Masks


def with_weights(model: onnx.ModelProto, arrays: Mapping[str, Any]) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers named in ``arrays`` hold those values."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.name in arrays:
            a = arrays[init.name]
            a = a.numpy() if hasattr(a, "numpy") else np.asarray(a)
            dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
            init.CopyFrom(numpy_helper.from_array(a.astype(dtype), init.name))
    return out


def masked_model(model: onnx.ModelProto, dg, masks: Masks) -> onnx.ModelProto:
    """The original graph with pruned positions zeroed (a Where) after every value ``masks`` cuts."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    by_value: dict[str, list] = {}
    for (value, d), keep in masks.items():
        v = dg.ir.values[value]
        weight = value in getattr(dg, "masked_weights", set())  # a recurrence's weights
        if (v.kind in ("act", "input") or weight) and v.dtype.startswith("float") and value not in dg.ir.outputs:
            by_value.setdefault(value, []).append((d, keep))
    users: dict[str, list] = {}
    for n in g.node:
        for k, i in enumerate(n.input):
            users.setdefault(i, []).append((n, k))
    after: dict[str, list] = {}
    for value, dims in sorted(by_value.items()):
        rank = dg.ir.values[value].rank
        mask = np.ones([1] * rank, dtype=np.float32)
        for d, keep in dims:
            shape = [1] * rank
            shape[d] = keep.size
            mask = mask * keep.astype(np.float32).reshape(shape)
        dtype = np.dtype(dg.ir.values[value].dtype)  # the IR knows it: no shape inference per value
        # Where, not Mul: a masked -inf (attention masks) must become 0, and 0 * -inf is nan
        g.initializer.append(numpy_helper.from_array(mask.astype(bool), f"{value}__gp_mask"))
        g.initializer.append(numpy_helper.from_array(np.zeros((), dtype=dtype), f"{value}__gp_zero"))
        for n, k in users.get(value, []):
            n.input[k] = f"{value}__gp_masked"
        after.setdefault(value, []).append(onnx.helper.make_node(
            "Where", [f"{value}__gp_mask", value, f"{value}__gp_zero"], [f"{value}__gp_masked"],
            name=f"{value}__gp_mask_where"))
    # Each Where goes right after its producer, to keep the graph topologically sorted.
    produced = {o for n in g.node for o in n.output}
    ordered = [node for value, nodes in after.items() if value not in produced for node in nodes]
    for n in list(g.node):
        ordered.append(n)
        for o in n.output:
            ordered.extend(after.get(o, []))
    del g.node[:]
    g.node.extend(ordered)
    del g.value_info[:]
    return out
