"""Apply a PrunePlan to an ONNX model.

Initializers are sliced along every pruned dim. Size constants (reshape targets,
expand shapes, split sizes, slice bounds) are traced back to the initializer
element that spells them, through Concat/Gather/Slice/Identity/Cast/Unsqueeze
chains; a constant shared with other consumers is cloned for the edge that
changes, so a reshape target used by both k and v can shrink for one of them
only. Elements read from a Shape op adapt by themselves at run time. Attributes
(conv ``group``, GroupNormalization ``num_groups``, opset<13 ``split``) are
rewritten in place. Dynamic axes are kept: the graph inputs are untouched.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import RewriteError
from ..graph import DependencyGraph
from ..planning.plan import PrunePlan, carried_value, keep_masks
from .onnx_depth import drop_unused_initializers, remove_blocks_onnx

_PASS_THROUGH = {"Identity", "Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten"}


class OnnxModel:
    """Index of an ONNX graph for edits: producers, initializers, Constant nodes."""

    def __init__(self, model: onnx.ModelProto, lengths: dict[str, int] | None = None) -> None:
        self.model = model
        self.lengths = dict(lengths or {})  # length of every 1-D tensor, from the IR's shapes
        self._fresh = 0
        self.reindex()

    def reindex(self) -> None:
        g = self.model.graph
        self.inits = {i.name: i for i in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output}
        self.users: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                self.users.setdefault(i, []).append(n)
        self.node_by_name = {n.name: n for n in g.node}

    def const_array(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
                if a.name == "value_ints":
                    return np.asarray(list(a.ints), dtype=np.int64)
                if a.name == "value_int":
                    return np.asarray(a.i, dtype=np.int64)
        return None

    def fresh(self, base: str) -> str:
        self._fresh += 1
        return f"{base}__gp{self._fresh}"


def locate(m: OnnxModel, value: str, k: int, depth: int = 0):
    """Where element k of int tensor ``value`` comes from: ("const", consumer, input idx, name, index),
    ("shape",) when read off a tensor's shape, or None when computed."""
    if depth > 32:
        return None
    node = m.producer.get(value)
    if value in m.inits or (node is not None and node.op_type == "Constant"):
        return ("const", value, k)
    if node is None:
        return None
    op = node.op_type
    if op == "Shape":
        return ("shape",)
    if op in _PASS_THROUGH:
        return _edge(m, node, 0, locate(m, node.input[0], k, depth + 1))
    if op == "Concat":
        offset = 0
        for idx, inp in enumerate(node.input):
            arr = m.const_array(inp)
            length = arr.size if arr is not None else _length(m, inp)
            if length is None:
                return None
            if k < offset + length:
                return _edge(m, node, idx, locate(m, inp, k - offset, depth + 1))
            offset += length
        return None
    if op == "Gather":
        idx = m.const_array(node.input[1])
        if idx is None:
            return None
        return _edge(m, node, 0, locate(m, node.input[0], int(np.atleast_1d(idx)[k]), depth + 1))
    if op == "Slice":
        starts = m.const_array(node.input[1])
        if starts is None:
            return None
        start = int(starts[0])
        if start < 0:
            n = m.const_array(node.input[0]).size if m.const_array(node.input[0]) is not None else _length(
                m, node.input[0])
            if n is None:
                return None
            start += n
        return _edge(m, node, 0, locate(m, node.input[0], start + k, depth + 1))
    return None


def _length(m: OnnxModel, value: str) -> int | None:
    if value in m.lengths:
        return m.lengths[value]
    node = m.producer.get(value)
    if node is None:
        return None
    if node.op_type == "Shape":
        start = next((a.i for a in node.attribute if a.name == "start"), 0)
        end = next((a.i for a in node.attribute if a.name == "end"), None)
        return None if start or end is None else end - start
    if node.op_type in _PASS_THROUGH and node.op_type in ("Identity", "Cast"):
        return _length(m, node.input[0])
    if node.op_type in ("Unsqueeze", "Gather"):
        return 1
    return None


def _edge(m: OnnxModel, consumer: onnx.NodeProto, idx: int, found):
    """Remember the first edge from a constant, so a clone can be wired into it."""
    if found is not None and found[0] == "const" and len(found) == 3:
        return found + (consumer.name, idx)
    return found


def vector_lengths(dg: DependencyGraph) -> dict[str, int]:
    return {v.name: v.shape[0] for v in dg.ir.values.values() if v.rank == 1 and isinstance(v.shape[0], int)}


def apply_plan_onnx(model: onnx.ModelProto, dg: DependencyGraph, plan: PrunePlan,
                    updates: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """A pruned copy of ``model`` (which must be the model ``dg`` was loaded from).

    ``updates`` (initializer name -> new values of the original shape, from compensation)
    replace an initializer's values before it is sliced; the dtype stays the initializer's.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    m = OnnxModel(out, vector_lengths(dg))
    masks = keep_masks(dg, plan)
    updates = updates or {}
    for v in dg.ir.params():
        dims = [(d, masks[(v.name, d)]) for d in range(v.rank) if (v.name, d) in masks]
        if (not dims and v.name not in updates) or v.name not in m.inits:
            continue
        arr = numpy_helper.to_array(m.inits[v.name])
        if v.name in updates:
            arr = np.asarray(updates[v.name]).astype(arr.dtype).reshape(arr.shape)
        for d, mask in dims:
            arr = np.take(arr, np.flatnonzero(mask), axis=d)
        m.inits[v.name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr), v.name))
    _rewrite_constants(m, dg, plan)
    if plan.blocks:

        remove_blocks_onnx(out, dg, dg.removed_blocks(plan.blocks))
    del out.graph.value_info[:]  # stale shapes; inferred afresh below
    try:
        return onnx.shape_inference.infer_shapes(out, data_prop=True)
    except Exception:  # an op without an inference function: onnxruntime still checks the model
        return out


def _privatize(m: OnnxModel, node: onnx.NodeProto, idx: int, depth: int = 0) -> None:
    """Give ``node`` its own copy of the int subgraph computing input ``idx``, so editing
    a size there cannot change what another consumer (a shared Concat) receives."""
    name = node.input[idx]
    producer = m.producer.get(name)
    if producer is None or producer.op_type in ("Constant", "Shape") or depth > 16:
        return  # constants are cloned per edge when edited; Shape reads live sizes
    if len(m.users.get(name, [])) > 1:
        clone = onnx.NodeProto()
        clone.CopyFrom(producer)
        clone.name = m.fresh(producer.name)
        del clone.output[:]
        clone.output.extend(m.fresh(o) for o in producer.output)
        for old, new in zip(producer.output, clone.output):
            if old in m.lengths:
                m.lengths[new] = m.lengths[old]
        m.model.graph.node.insert(list(m.model.graph.node).index(producer) + 1, clone)
        node.input[idx] = clone.output[list(producer.output).index(name)]
        m.reindex()
        producer = clone
    for k in range(len(producer.input)):
        _privatize(m, producer, k, depth + 1)


def _rewrite_constants(m: OnnxModel, dg: DependencyGraph, plan: PrunePlan) -> None:
    pruned = plan.masks()
    changed = []
    for c in dg.carries:
        new = carried_value(dg, c, pruned)
        if new != c.value:
            changed.append((c, new))
    for c, _ in changed:
        node = m.node_by_name.get(c.node)
        if node is not None and not isinstance(c.path[0], str):
            _privatize(m, node, c.path[0])
    edits: dict[tuple, dict[int, int]] = {}  # (const name, consumer, input idx) -> {index: new value}
    for c, new in changed:
        node = m.node_by_name.get(c.node)
        if node is None:
            raise RewriteError(f"node '{c.node}' of the plan is not in the ONNX model")
        if isinstance(c.path[0], str):
            _set_attribute(node, c.path, new)
            continue
        where = locate(m, node.input[c.path[0]], c.path[1] if len(c.path) > 1 else 0)
        if where is None:
            raise RewriteError(f"the size {c.value} in input {c.path[0]} of node '{c.node}' ({node.op_type}) is "
                               "computed by shape arithmetic the rewrite cannot follow; exclude it with ignore=[...]")
        if where[0] == "shape":
            continue  # read from a tensor whose dim shrinks with the plan
        _, const, index, consumer, idx = where if len(where) == 5 else (*where, c.node, c.path[0])
        slot = edits.setdefault((const, consumer, idx), {})
        if slot.get(index, new) != new:
            raise RewriteError(f"constant '{const}' element {index} must become both {slot[index]} and {new}")
        slot[index] = new
    for (const, consumer, idx), changes in sorted(edits.items()):
        arr = m.const_array(const).copy()
        flat = arr.reshape(-1)
        for index, value in changes.items():
            flat[index] = value
        node = m.node_by_name[consumer]
        users = m.users.get(const, [])
        if len(users) == 1 and node.input[idx] == const and const in m.inits:
            m.inits[const].CopyFrom(numpy_helper.from_array(arr, const))
            continue
        name = m.fresh(const)  # shared with other consumers: this edge gets its own copy
        m.model.graph.initializer.append(numpy_helper.from_array(arr, name))
        m.inits[name] = m.model.graph.initializer[-1]
        node.input[idx] = name
    # a constant every consumer now reads a copy of goes (onnxruntime warns on each load of an unused one)
    drop_unused_initializers(m.model.graph, {const for const, _, _ in edits})


def _set_attribute(node: onnx.NodeProto, path: tuple, new: int) -> None:
    for a in node.attribute:
        if a.name == path[0]:
            if a.type == onnx.AttributeProto.INTS:
                ints = list(a.ints)
                ints[path[1]] = new
                del a.ints[:]
                a.ints.extend(ints)
            else:
                a.i = new
            return
    raise RewriteError(f"node '{node.name}' has no attribute '{path[0]}' to rewrite")
