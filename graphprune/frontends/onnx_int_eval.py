"""Partial evaluation of an ONNX graph's integer arithmetic (shapes, reshape targets, pad lists).

Exporters build such small int tensors from constants with a chain of ops instead of writing
them out: torch.onnx's ``F.pad`` is Concat(pads, ConstantOfShape) -> Reshape(-1, 2) -> Slice
(reversed) -> Transpose -> Reshape(-1) -> Cast. A rule that cannot read the result must freeze
what it touches (a Pad would freeze the channels it passes through untouched), so every
value computable from constants is evaluated here, with its shape, and kept as flat data.
"""
from __future__ import annotations

import numpy as np

from ..ir import Graph

MAX_DATA = 64  # int tensors up to this size are evaluated and kept as data


def _as_array(g: Graph, name: str, flat: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(flat, dtype=np.int64)
    shape = g.values[name].shape
    if all(isinstance(d, int) for d in shape) and int(np.prod(shape, dtype=np.int64)) == a.size:
        return a.reshape(shape)
    return a


def _slice(a: np.ndarray, starts, ends, axes, steps) -> np.ndarray:
    axes = list(axes) if axes is not None else list(range(len(starts)))
    steps = list(steps) if steps is not None else [1] * len(starts)
    index = [slice(None)] * a.ndim
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        index[ax % a.ndim] = slice(int(st), int(en), int(sp))  # Python clamps as ONNX does
    return a[tuple(index)]


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ONNX integer Div truncates toward zero (numpy's // floors); a zero divisor gives 0 here
    instead of undefined behaviour."""
    safe = np.where(b == 0, 1, b)
    return np.where(b == 0, 0, np.sign(a) * np.sign(safe) * (np.abs(a) // np.abs(safe)))


def _evaluate(op: str, node, g: Graph, get, out: str) -> np.ndarray | None:
    out_shape = g.values[out].shape
    static = all(isinstance(d, int) for d in out_shape)
    if op == "Shape":
        shape = g.values[node.args[0].name].shape
        part = shape[node.kwargs.get("start", 0):node.kwargs.get("end", len(shape))]
        return np.asarray(part, dtype=np.int64) if all(isinstance(d, int) for d in part) else None
    if op == "ConstantOfShape" and get(0) is not None:
        if int(np.prod(get(0), dtype=np.int64)) > MAX_DATA:  # a mask or buffer, not arithmetic: never built
            return None
        value = np.asarray(node.kwargs.get("value", [0])).reshape(-1)
        return np.full(tuple(int(d) for d in get(0).reshape(-1)), int(value[0]) if value.size else 0, dtype=np.int64)
    if get(0) is None:
        return None
    a = get(0)
    if op in ("Identity", "Cast", "Squeeze", "Unsqueeze", "Reshape", "Flatten"):
        return a.reshape(out_shape) if static else a.reshape(-1)
    if op == "Transpose":
        return np.transpose(a, node.kwargs.get("perm"))
    if op == "Concat":
        parts = [get(i) for i in range(len(node.args))]
        if any(p is None for p in parts):
            return None
        axis = node.kwargs.get("axis", 0)
        return np.concatenate([np.atleast_1d(p) for p in parts], axis=axis)
    if op == "Gather" and get(1) is not None:
        return np.take(a, get(1), axis=node.kwargs.get("axis", 0))
    if op == "Slice" and get(1) is not None and get(2) is not None:
        return _slice(a, get(1).reshape(-1), get(2).reshape(-1), None if get(3) is None else get(3).reshape(-1),
                      None if get(4) is None else get(4).reshape(-1))
    if op in ("Add", "Sub", "Mul", "Div") and get(1) is not None:
        b = get(1)
        return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply,
                "Div": _div}[op](a, b)
    return None


def evaluate_int_tensors(g: Graph, data: dict[str, tuple[int, ...]]) -> None:
    """Every int value computable from ``data`` (constants and values already known), in node
    order, written into ``data`` and onto its IR value as flat data."""
    arrays = {n: _as_array(g, n, v) for n, v in data.items() if n in g.values}
    for node in g.nodes:
        out = node.outputs[0] if node.outputs else None
        if out is None or out not in g.values or not g.values[out].dtype.startswith("int"):
            continue
        names = [r.name if r is not None else None for r in node.args]
        get = lambda i: arrays.get(names[i]) if len(names) > i and names[i] else None  # noqa: E731
        try:
            val = _evaluate(node.op.split(".")[-1], node, g, get, out)
        except (ValueError, IndexError, TypeError, ZeroDivisionError):  # shapes that do not fit: unknown
            val = None
        if val is not None and val.size <= MAX_DATA:
            arrays[out] = val.astype(np.int64)
            data[out] = tuple(int(x) for x in val.reshape(-1))
            g.values[out].data = data[out]
