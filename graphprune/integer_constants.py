"""Integer constants indexed along a channel: they pin that channel, as no slice renumbers their values.

Their values may be positions (CondenseNet's channel index buffer). A boolean mask (zuko's MADE masks, multiplied
into a weight) is sliced like a float weight. An int8 weight a Cast turns into floats (weight-only quantization as
an exporter spells it: Cast, then Mul by a scale) is the quantized graph's, and said so.

Plain IR reading: no torch, no onnx.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .reasons import CONSTANT, QUANTIZED, at

if TYPE_CHECKING:
    from .ir import Graph
    from .spaces import Solver

_DEQUANTIZING = ("onnx.Cast", "onnx.DequantizeLinear", "aten._to_copy", "aten.to")
_NARROW = ("int8", "uint8", "int4", "uint4", "torch.int8", "torch.uint8")


def freeze_integer_constants(graph: "Graph", solver: "Solver", users: dict[str, list]) -> None:
    for v in graph.values.values():
        if v.kind not in ("const", "buffer") or v.dtype.startswith(("float", "bfloat", "complex")) or (
                v.kind == "buffer" and v.dtype == "bool"):
            continue
        readers = users.get(v.name) or []
        quantized = v.dtype in _NARROW and v.rank >= 2 and any(n.op in _DEQUANTIZING for n in readers)
        for d, size in enumerate(v.shape):
            if not isinstance(size, int) or size <= 1:
                continue
            if quantized:
                why = (f"{v.dtype} weight '{v.name}' (dim {d}), turned into floats by {readers[0].op} at node "
                       f"'{readers[0].name}': the graph is quantized (its weights); prune the float model, then "
                       "quantize it")
                solver.freeze((v.name, d), at(QUANTIZED, why, readers[0]))
                continue
            kind = "integer" if v.dtype.startswith(("int", "uint")) else v.dtype
            why = f"indexes {kind} constant '{v.name}' (dim {d}); only float weights, boolean buffers are sliced"
            solver.freeze((v.name, d), at(CONSTANT, why, (readers or [None])[0]))
