"""Chains of Mul/Add/Sub/Div by a scalar on an image-shaped tensor, written as one BatchNormalization.

What frontends/onnx_affine.py cannot fold into a convolution (PP-LCNetV3's ``Mul(s) -> Add(b)``
after a hard-swish, before a padded depthwise convolution) onnxruntime would run as two passes over
the feature map, each out of its blocked layout with a reorder before and after. A
BatchNormalization with scale ``a``, bias ``b``, mean 0, variance 1 and epsilon 0 is ``a x + b``
exactly, and onnxruntime keeps it in the blocked layout (as a per-channel affine step): on
PP-OCRv4's detector the 14 pairs left after the folds cost 1.13x-1.16x of the whole model
(docs/runtime.md, fifteenth pass).

Rewritten only on float32 tensors of rank 4 whose channel count shape inference knows, that come
from an op onnxruntime keeps in that layout (frontends/onnx_affine.py ``BLOCKED``: after an Erf or
a Reshape the rewrite would break onnxruntime's own GELU and attention fusions) and that such an
op reads (before a Reshape the value leaves the layout anyway: PP-OCR's orientation classifier ran
0.96x as fast with it), at opset 9 or later (BatchNormalization's inference form), where the
chain's inner values have no other reader.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .onnx_affine import BLOCKED, SCALAR_STEPS, in_blocked_layout
from .onnx_fuse import GraphIndex, default_opset, drop_unused_constants, drop_value_info, fresh_name, names_in

_F32_MAX = float(np.finfo(np.float32).max)
# The new node's doc_string: its constants are sliced with their channels but are no learnt weights,
# so the importance criteria must not read them (a scale the same in every channel would make
# bn_scale rank by index, and l2 scores would all gain the same offset; frontends/onnx_lower.py).
NOT_LEARNED = "graphprune: Mul/Add by a scalar written as one per-channel op; its constants are not learnt"


def _step(ix: GraphIndex, node: onnx.NodeProto) -> tuple[str, float, float] | None:
    """(the tensor operand, a, b) where ``node`` computes ``a * tensor + b`` with a scalar constant."""
    if node.op_type not in SCALAR_STEPS or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
        return None
    for k in (0, 1):
        x, v = node.input[k], ix.scalar(node.input[1 - k], node.input[k])
        if v is None:
            continue
        if node.op_type == "Mul":
            return x, v, 0.0
        if node.op_type == "Add":
            return x, 1.0, v
        if node.op_type == "Sub":
            return (x, 1.0, -v) if k == 0 else (x, -1.0, v)
        if k == 0 and v != 0.0:  # Div(x, v); Div(v, x) is not affine
            return x, 1.0 / v, 0.0
    return None


def _channels(model: onnx.ModelProto) -> dict[str, int]:
    """Channel counts of the float32 rank-4 values shape inference knows."""
    try:
        g = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    except Exception:  # noqa: BLE001 - without shapes nothing is rewritten, which is safe
        return {}
    out = {}
    for v in (*g.value_info, *g.input, *g.output):
        t = v.type.tensor_type
        if v.type.HasField("tensor_type") and t.elem_type == onnx.TensorProto.FLOAT and t.HasField("shape") \
                and len(t.shape.dim) == 4 and t.shape.dim[1].dim_value > 0:
            out[v.name] = t.shape.dim[1].dim_value
    return out


def affine_as_batchnorm(model: onnx.ModelProto) -> list[str]:
    """Rewrite each chain of scalar affine ops on a float32 image tensor as one BatchNormalization
    (module doc), in ``model``'s main graph, in place; the new node takes the chain's last node's
    name and output. Returns those names."""
    if default_opset(model) < 9 or model.ir_version < 4:  # before IR 4 an initializer must also be an input
        return []
    ix = GraphIndex(model)
    steps = {id(n): s for n in model.graph.node if (s := _step(ix, n)) is not None}
    if not steps:
        return []
    channels = _channels(model)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in dict.fromkeys(n.input):
            readers.setdefault(i, []).append(n)
    inner = set()  # chain links after the first: consumed by the chain that starts before them
    chains = []
    for n in model.graph.node:
        if id(n) not in steps or id(n) in inner or steps[id(n)][0] not in channels \
                or not in_blocked_layout(ix, steps[id(n)][0]):
            continue
        x, a, b = steps[id(n)]
        links, last = [n], n
        while True:  # on through steps that alone read the last one's value
            after = readers.get(last.output[0], [])
            nxt = after[0] if len(after) == 1 and ix.users.get(last.output[0], 0) == 1 else None
            if nxt is None or id(nxt) not in steps or steps[id(nxt)][0] != last.output[0]:
                break
            _, a2, b2 = steps[id(nxt)]
            a, b = a2 * a, a2 * b + b2
            links.append(nxt)
            inner.add(id(nxt))
            last = nxt
        finite = abs(a) <= _F32_MAX and abs(b) <= _F32_MAX  # 1e20 * 1e20 is no float32 scale
        if finite and any(r.op_type in BLOCKED for r in readers.get(last.output[0], [])):
            chains.append((x, a, b, links))  # read in the blocked layout too: else nothing to keep there
    if not chains:
        return []
    taken = names_in(model.graph)
    first = {id(links[0]): (x, a, b, links) for x, a, b, links in chains}
    dropped = {id(m) for *_, links in chains for m in links}
    out, done = [], []
    for n in model.graph.node:
        if id(n) in first:
            x, a, b, links = first[id(n)]
            last = links[-1]
            name = last.name or last.output[0]
            params = []
            for what, value in (("scale", a), ("bias", b), ("mean", 0.0), ("var", 1.0)):
                params.append(fresh_name(f"{name}_{what}", taken))
                model.graph.initializer.append(numpy_helper.from_array(
                    np.full(channels[x], value, np.float32), params[-1]))
            out.append(helper.make_node("BatchNormalization", [x, *params], [last.output[0]], name=name, epsilon=0.0,
                                        doc_string=NOT_LEARNED))
            done.append(name)
        elif id(n) not in dropped:
            out.append(n)
    candidates = {i for m in model.graph.node if id(m) in dropped for i in m.input}
    stale = {m.output[0] for m in model.graph.node if id(m) in dropped} - {c[3][-1].output[0] for c in chains}
    del model.graph.node[:]
    model.graph.node.extend(out)
    drop_unused_constants(model, candidates)
    drop_value_info(model, stale)
    return done
