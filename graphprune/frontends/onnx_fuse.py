"""Activations spelled as several ops, written as the single ops onnxruntime keeps in its layout.

Exporters such as paddle2onnx spell hard-swish as ``Add(x, 3) -> Clip(0, 6) -> Mul(x, .) -> Div(., 6)``
and hard-sigmoid as ``Add -> Clip -> Div``. onnxruntime runs convolutions in a blocked channel
layout (NCHWc) and keeps a HardSwish or HardSigmoid inside it, but not a Clip or a Div by a
scalar: around every spelled activation it converts the tensor out of the layout and back. On
PP-OCR's text-direction classifier that is a third of the time, on PicoDet (layout_cdla) more
than half (docs/runtime.md). Widths cannot remove that overhead; writing the ops it was meant to
be does, on the original as much as on the pruned model, so the report times both.

Written as ``HardSwish`` from opset 14 (where it exists) and as ``Mul(x, HardSigmoid(x))`` before
it: onnxruntime keeps either in the layout, and the opset is never changed (other ops' meaning
depends on it). Only chains whose inner results feed nothing else are rewritten.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

SIXTH = 1.0 / 6.0


@dataclass
class Fused:
    """What was rewritten: the last node of each chain (its output name is kept), by kind."""

    hard_swish: list[str] = field(default_factory=list)
    hard_sigmoid: list[str] = field(default_factory=list)
    softmax: list[str] = field(default_factory=list)  # moved ahead of their Transpose (frontends/onnx_softmax.py)
    subnormal: tuple[int, int] = (0, 0)  # weights set to 0, in how many tensors (frontends/onnx_subnormal.py)
    affine: list[str] = field(default_factory=list)  # scalar Mul/Add folded into a Conv (frontends/onnx_affine.py)
    channel_affine: list[str] = field(default_factory=list)  # scalar affine chains -> BatchNormalization
    split_conv: list[str] = field(default_factory=list)  # Splits of a convolution's output (frontends/onnx_split_conv.py)

    def __bool__(self) -> bool:
        return bool(self.hard_swish or self.hard_sigmoid or self.softmax or self.subnormal[0] or self.affine
                    or self.channel_affine or self.split_conv)

    def note(self) -> str:
        parts = []
        if self.hard_swish:
            parts.append(f"{len(self.hard_swish)} hard-swish spelled as Add/Clip/Mul/Div")
        if self.hard_sigmoid:
            parts.append(f"{len(self.hard_sigmoid)} hard-sigmoid spelled as Add/Clip/Div")
        notes = []
        if parts:
            notes.append(f"{' and '.join(parts)} written as the single ops onnxruntime keeps in its blocked layout")
        if self.subnormal[0]:
            notes.append(f"{self.subnormal[0]} subnormal weight(s) (below 1.2e-38) in {self.subnormal[1]} tensor(s) "
                         "set to 0, which x86 computes with tens of times slower")
        if self.affine:
            notes.append(f"{len(self.affine)} Mul/Add by a scalar beside a convolution folded into its weights and bias")
        if self.channel_affine:
            notes.append(f"{len(self.channel_affine)} chain(s) of Mul/Add by a scalar written as one BatchNormalization "
                         "each, which onnxruntime keeps in its blocked layout")
        if self.split_conv:
            notes.append(f"{len(self.split_conv)} Split(s) of a convolution's output along its channels written as one "
                         "convolution per piece, which onnxruntime keeps in its blocked layout")
        if self.softmax:
            notes.append(f"{len(self.softmax)} softmax op(s) moved ahead of the Transpose they read, onto an axis "
                         f"onnxruntime transposes faster ({', '.join(self.softmax[:3])})")
        return f"rewritten for onnxruntime: {'; '.join(notes)} (outputs checked equal; fuse=False keeps the graph's ops as given)"


def _subgraphs(node: onnx.NodeProto):
    for a in node.attribute:
        yield from ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs))


def names_in(graph: onnx.GraphProto) -> set[str]:
    """Every name a graph and its subgraphs read or define (If/Loop bodies read outer values
    without listing them as the node's inputs)."""
    out = {i.name for i in graph.input} | {o.name for o in graph.output} | {i.name for i in graph.initializer}
    for n in graph.node:
        out.update(n.input)
        out.update(n.output)
        out.add(n.name)
        for sub in _subgraphs(n):
            out |= names_in(sub)
    return out


class GraphIndex:
    """Each value's producer and how many read it (a graph output or a read inside an If/Loop body
    counts too, so such a value is never taken for an inner result)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.inits = {i.name: i for i in g.initializer}
        self.fed = {i.name for i in g.input}  # an initializer that is also an input can be fed another value
        self.producer = {o: n for n in g.node for o in n.output}
        self.users: dict[str, int] = {}
        for n in g.node:
            for i in n.input:
                self.users[i] = self.users.get(i, 0) + 1
            for sub in _subgraphs(n):  # read inside a body: never an inner result, never dropped
                for name in names_in(sub):
                    self.users[name] = self.users.get(name, 0) + 2
        for o in g.output:
            self.users[o.name] = self.users.get(o.name, 0) + 1  # a graph output is never an inner result
        self._model = model

    @functools.cached_property
    def ranks(self) -> dict[str, int]:  # shape inference: only where a rank-1 constant needs it
        return _ranks(self._model)

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer (its data loaded, not a graph input that can be fed another value)
        or of a Constant node's tensor; None for anything computed."""
        if name in self.fed:
            return None
        t = self.inits.get(name)
        if t is not None:
            return None if t.data_location == onnx.TensorProto.EXTERNAL else numpy_helper.to_array(t)
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant" and len(node.attribute) == 1 \
                and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def scalar(self, name: str, x: str | None = None) -> float | None:
        """The value of a one-element float32/float16 constant (onnxruntime has no double HardSigmoid)
        of rank 0, or of rank 1 where ``x`` is known to have rank >= 1 (it would broadcast a scalar x up)."""
        arr = self.constant(name)
        if arr is None or arr.size != 1 or arr.dtype not in (np.float32, np.float16):
            return None
        if arr.ndim > 1 or (arr.ndim == 1 and (x is None or self.ranks.get(x, 0) < 1)):
            return None
        return float(arr.reshape(()))

    def op(self, name: str, op_type: str) -> onnx.NodeProto | None:
        """The producer of ``name`` if it is ``op_type`` and ``name`` feeds one node only."""
        node = self.producer.get(name)
        ok = node is not None and node.op_type == op_type and node.domain in ("", "ai.onnx")
        return node if ok and self.users.get(name, 0) == 1 else None


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Ranks ONNX shape inference knows (empty where it cannot run, e.g. a model over 2 GB)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - without ranks only rank-0 constants match, which is safe
        return {}
    g = inferred.graph
    return {v.name: len(v.type.tensor_type.shape.dim) for v in (*g.value_info, *g.input, *g.output)
            if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")}


def _is(value: float | None, target: float) -> bool:
    return value is not None and abs(value - target) <= 1e-6 * max(1.0, abs(target))


def _other(node: onnx.NodeProto, idx: int) -> str:
    return node.input[1 - idx]


def _scaled_by_sixth(ix: GraphIndex, node: onnx.NodeProto) -> str | None:
    """For ``Div(a, 6)`` or ``Mul(a, 1/6)`` (either order), ``a``; else None."""
    if node.domain not in ("", "ai.onnx") or len(node.input) != 2:
        return None
    if node.op_type == "Div" and _is(ix.scalar(node.input[1], node.input[0]), 6.0):
        return node.input[0]
    if node.op_type == "Mul":
        for k in (0, 1):
            if _is(ix.scalar(node.input[k], _other(node, k)), SIXTH):
                return _other(node, k)
    return None


def _relu6_of_x_plus_3(ix: GraphIndex, name: str, opset: int) -> tuple[str, list[onnx.NodeProto]] | None:
    """For ``Clip(Add(x, 3), 0, 6)`` (inner results feeding nothing else): ``x`` and the two nodes."""
    clip = ix.op(name, "Clip")
    if clip is None:
        return None
    if opset >= 11:
        bounds = [ix.scalar(clip.input[k], clip.input[0]) if len(clip.input) > k and clip.input[k] else None
                  for k in (1, 2)]
    else:
        attrs = {a.name: a.f for a in clip.attribute}
        bounds = [attrs.get("min"), attrs.get("max")]
    if not (_is(bounds[0], 0.0) and _is(bounds[1], 6.0)):
        return None
    add = ix.op(clip.input[0], "Add")
    if add is None or len(add.input) != 2:
        return None
    for k in (0, 1):
        x = _other(add, k)
        if _is(ix.scalar(add.input[k], x), 3.0) and x not in ix.inits and ix.producer.get(x, add).op_type != "Constant":
            return x, [add, clip]
    return None


def _match(ix: GraphIndex, last: onnx.NodeProto, opset: int) -> tuple[str, str, list[onnx.NodeProto]] | None:
    """("swish" | "sigmoid", x, the chain's nodes before ``last``) where ``last`` ends one."""
    inner = _scaled_by_sixth(ix, last)
    if inner is None:
        return None
    gate = _relu6_of_x_plus_3(ix, inner, opset)
    if gate is not None:  # Div(Clip(Add(x, 3)), 6): hard-sigmoid; a Mul by x after it is matched from there
        return "sigmoid", gate[0], gate[1]
    mul = ix.op(inner, "Mul")  # Div(Mul(x, Clip(Add(x, 3))), 6)
    if mul is not None and len(mul.input) == 2:
        for k in (0, 1):
            gate = _relu6_of_x_plus_3(ix, mul.input[k], opset)
            if gate is not None and gate[0] == _other(mul, k):
                return "swish", gate[0], gate[1] + [mul]
    return None


def _gated(ix: GraphIndex, node: onnx.NodeProto, sigmoid_ends: dict[str, tuple]) -> tuple | None:
    """For ``Mul(x, hard_sigmoid(x))``: (x, the hard-sigmoid chain's nodes, its last node)."""
    if node.op_type != "Mul" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
        return None
    for k in (0, 1):
        found = sigmoid_ends.get(node.input[k])
        if found is not None and found[0] == _other(node, k) and ix.users.get(node.input[k], 0) == 1:
            return found[0], found[1] + [found[2]], found[2]
    return None


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def fuse_activations(model: onnx.ModelProto) -> Fused:
    """Rewrite spelled hard-swish / hard-sigmoid chains of ``model``'s main graph in place; the
    rewritten node takes the chain's last node's name and output. Constants left unused go."""
    opset = default_opset(model)
    ix = GraphIndex(model)
    sigmoid_ends: dict[str, tuple] = {}  # output of a hard-sigmoid chain's last node -> (x, nodes, last)
    chains: dict[int, tuple[str, str, list]] = {}  # id(last node) -> (kind, x, nodes before it)
    for node in model.graph.node:
        found = _match(ix, node, opset)
        if found is None:
            continue
        kind, x, nodes = found
        if kind == "sigmoid":
            sigmoid_ends[node.output[0]] = (x, nodes, node)
        chains[id(node)] = found
    for node in model.graph.node:  # a hard-sigmoid multiplied by its own input is a hard-swish
        gated = _gated(ix, node, sigmoid_ends)
        if gated is not None:
            chains.pop(id(gated[2]), None)
            chains[id(node)] = ("swish", gated[0], gated[1])
    if not chains:
        return Fused()
    fused = Fused()
    taken = names_in(model.graph)
    dropped = {id(n) for _, _, nodes in chains.values() for n in nodes}
    candidates = {i for n in model.graph.node if id(n) in dropped or id(n) in chains for i in n.input}
    dropped_nodes = [n for n in model.graph.node if id(n) in dropped]
    out: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if id(node) in dropped:
            continue
        if id(node) not in chains:
            out.append(node)
            continue
        kind, x, _ = chains[id(node)]
        y = node.output[0]
        name = node.name or y
        if kind == "swish":
            fused.hard_swish.append(name)
            if opset >= 14:
                out.append(helper.make_node("HardSwish", [x], [y], name=name))
                continue
            gate = fresh_name(f"{name}_gate", taken)
            out.append(helper.make_node("HardSigmoid", [x], [gate], name=gate, alpha=SIXTH, beta=0.5))
            out.append(helper.make_node("Mul", [x, gate], [y], name=name))
        else:
            fused.hard_sigmoid.append(name)
            out.append(helper.make_node("HardSigmoid", [x], [y], name=name, alpha=SIXTH, beta=0.5))
    del model.graph.node[:]
    model.graph.node.extend(out)
    drop_unused_constants(model, candidates)
    drop_value_info(model, {o for n in dropped_nodes for o in n.output})
    return fused


def fresh_name(base: str, taken: set[str]) -> str:
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}{k}"
    taken.add(name)
    return name


def drop_value_info(model: onnx.ModelProto, gone: set[str]) -> None:
    """Forget the shapes recorded for values a rewrite removed."""
    if gone and any(v.name in gone for v in model.graph.value_info):
        keep = [v for v in model.graph.value_info if v.name not in gone]
        del model.graph.value_info[:]
        model.graph.value_info.extend(keep)


def drop_unused_constants(model: onnx.ModelProto, candidates: set[str]) -> None:
    """Initializers and Constant nodes among ``candidates`` that nothing reads any more."""
    g = model.graph
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output} | {i.name for i in g.input}
    used |= {name for n in g.node for sub in _subgraphs(n) for name in names_in(sub)}
    gone = candidates - used
    if any(i.name in gone for i in g.initializer):
        keep = [i for i in g.initializer if i.name not in gone]
        del g.initializer[:]
        g.initializer.extend(keep)
    if any(n.op_type == "Constant" and n.output[0] in gone for n in g.node):
        keep_nodes = [n for n in g.node if not (n.op_type == "Constant" and n.output[0] in gone)]
        del g.node[:]
        g.node.extend(keep_nodes)
