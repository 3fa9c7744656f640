"""Calibration batches an ONNX model can take, and onnxruntime's errors in full.

A plain ``torch.onnx.export`` fixes the batch at the example's size (often 1). Calibration data come
in whatever batches the user has (``--calib-batch 8``, a DataLoader's 32), so batches of a multiple
of the fixed size are cut into batches of it, item by item: the statistics are sums over items, so
they are the same. What cannot be cut so is left for onnxruntime to refuse, with its whole message
(which input, which index, what it got and expected), not just the first line.
"""
from __future__ import annotations

import re

import numpy as np
import onnx

_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : (\w+) : ")
_ORT_NODE = re.compile(r"Non-zero status code returned while running (\S+) node\. Name:'([^']*)' Status Message: ")


def ort_text(exc: BaseException, limit: int = 400) -> str:
    """onnxruntime's message on one line, its boilerplate cut ("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT :
    Non-zero status code returned while running Conv node. Name:'Conv_3' Status Message: ...", whose cause
    a note's first 120 characters cut off) to "INVALID_ARGUMENT: Conv node 'Conv_3': ..."."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = _ORT_NODE.sub(lambda m: f"{m.group(1)} node '{m.group(2)}': ", _ORT_PREFIX.sub(r"\1: ", text))
    return text if len(text) <= limit else text[:limit] + "..."


def fixed_batch(model: onnx.ModelProto, names: list[str]) -> int | None:
    """The batch size the graph's inputs fix (every input of rank >= 1 declaring the same dim 0),
    or None where any input leaves it dynamic or they disagree."""
    declared = {}
    for vi in model.graph.input:
        if vi.name not in names:
            continue
        dims = vi.type.tensor_type.shape.dim
        if not dims:
            continue
        if not dims[0].HasField("dim_value") or dims[0].dim_value < 1:
            return None
        declared[vi.name] = dims[0].dim_value
    sizes = set(declared.values())
    return sizes.pop() if len(sizes) == 1 else None


def split_to(batches: list[dict[str, np.ndarray]], size: int | None) -> tuple[list[dict], str | None]:
    """``batches`` with each one whose items are a multiple of ``size`` cut into batches of ``size``,
    and the report's note where any was. Scalars and batches of another size are kept as they are."""
    if size is None:
        return batches, None
    out, cut = [], 0
    for b in batches:
        lead = {v.shape[0] for v in b.values() if np.ndim(v) >= 1}
        n = lead.pop() if len(lead) == 1 else None
        if n is None or n == size or n % size:
            out.append(b)
            continue
        cut += 1
        for start in range(0, n, size):
            out.append({k: v[start:start + size] if np.ndim(v) >= 1 else v for k, v in b.items()})
    note = (f"calibration: batches cut into batches of {size}, the batch size the graph fixes ({cut} cut, item by "
            "item: the same statistics)") if cut else None
    return out, note
