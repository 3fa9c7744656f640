"""The oracle's tolerance for an ONNX model, by the float precision it computes in.

A float32 model is held to 1e-4 relative to its outputs' magnitude (about 800 float32 steps at 1:
pruning changes the order a sum is taken in, nothing else). A float16 model rounds every op's result to
11 bits: a pruned model's outputs differ from the masked original's by a step or two of 2^-11 to 2^-10
even where the rewrite is exact (slovorez's 1-D CNN: 2.44e-4, one float16 step below 1), so 1e-4 refused
every plan. Half precision gets the same margin in its own steps, about 10 of them at 1.
"""
from __future__ import annotations

import onnx

FLOAT32_ATOL = 1e-4
HALF_ATOL = {"float16": 1e-2, "bfloat16": 6e-2}  # ~10 steps at 1: 2^-10 and 2^-7 apart
_HALF = ((onnx.TensorProto.BFLOAT16, "bfloat16"), (onnx.TensorProto.FLOAT16, "float16"))  # the coarser first


def half_precision(model: onnx.ModelProto) -> str:
    """"bfloat16" or "float16" where any float output or weight is stored in it (the coarser first), else ""."""
    g = model.graph
    types = {t.data_type for t in g.initializer} | {o.type.tensor_type.elem_type for o in g.output}
    types |= {n.attribute[0].t.data_type for n in g.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    return next((name for code, name in _HALF if code in types), "")


def oracle_atol(precision: str) -> float:
    return HALF_ATOL.get(precision, FLOAT32_ATOL)
