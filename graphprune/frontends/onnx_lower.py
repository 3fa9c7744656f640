"""ONNX file -> IR, through onnx-graphsurgeon.

Loading checks the file before anything else (a truncated or non-ONNX file, an
external-data path that leaves the model's folder). Shapes come from ONNX shape
inference; where it leaves holes, the model is run once in onnxruntime on
example inputs and the observed shapes fill them. Small integer tensors (reshape
targets, split sizes, slice bounds, and the Shape/Gather/Concat arithmetic that
builds them) are evaluated so the rules can read them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..backends.onnx_rewrite import OnnxModel, locate, vector_lengths
from ..errors import TraceError
from ..ir import Graph, Node, NodeMeta, Ref, Value
from ..reasons import COMPUTED, Reason
from .onnx_channel_affine import NOT_LEARNED
from .onnx_fills import FILL_COPY, split_shared_fills
from .onnx_guarded_inference import infer_at_sizes
from .onnx_int_eval import MAX_DATA, evaluate_int_tensors
from .onnx_weight_dims import weight_dims


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Float tensors held in ``Constant`` nodes of the main graph become initializers of the
    same name (paddle2onnx and other exporters store weights this way): the engine reads
    initializers as parameters it can slice, and an initializer is valid wherever the Constant
    was. Integer constants (shapes, axes) stay: the analysis reads them as data. Returns the
    number moved."""
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)
    keep, moved = [], 0
    if model.ir_version < 4:  # before IR 4 every initializer must also be a graph input
        return 0
    outputs = {o.name for o in model.graph.output}
    for n in model.graph.node:
        attr = {a.name: a for a in n.attribute}
        value = attr.get("value")
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and len(attr) == 1 and value is not None \
                and value.t.data_type in floats and len(value.t.dims) >= 1 and n.output[0] not in outputs:
            t = onnx.TensorProto()
            t.CopyFrom(value.t)
            t.name = n.output[0]
            model.graph.initializer.append(t)
            moved += 1
        else:
            keep.append(n)
    if moved:
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return moved


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX file with its external data, refusing unsafe or broken input."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"ONNX file '{path}' does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise TraceError(f"'{path}' is not a valid ONNX model ({type(exc).__name__}: {exc}); "
                         "the file may be truncated or not ONNX at all") from exc
    if not model.graph.node and not model.graph.input:
        raise TraceError(f"'{path}' parsed as protobuf but holds no ONNX graph; it is probably not an ONNX file")
    base = path.resolve().parent
    for init in list(model.graph.initializer):
        if init.data_location == onnx.TensorProto.EXTERNAL:
            loc = {e.key: e.value for e in init.external_data}.get("location", "")
            target = (base / loc).resolve()
            if os.path.isabs(loc) or base not in target.parents:
                raise TraceError(f"initializer '{init.name}' points its external data at '{loc}', outside the "
                                 f"model's folder {base}; refusing to read it")
            if not target.is_file():
                raise TraceError(f"initializer '{init.name}': external data file '{loc}' is missing next to {path}")
    try:
        onnx.load_external_data_for_model(model, str(base))
        onnx.checker.check_model(model)
    except Exception as exc:
        raise TraceError(f"'{path}' is not a valid ONNX model: {exc}") from exc
    constants_to_initializers(model)
    split_shared_fills(model)
    taken = {n.name for n in model.graph.node}
    for k, n in enumerate(model.graph.node):  # analysis and rewrite must name nodes alike
        if not n.name:
            n.name = f"{n.op_type}_{k}" if f"{n.op_type}_{k}" not in taken else f"{n.op_type}_{k}_gp"
            taken.add(n.name)
    return model


def freeze_unreachable(dg, model: onnx.ModelProto) -> None:
    """Freeze sizes spelled by shape arithmetic the ONNX rewrite cannot follow."""

    m = OnnxModel(model, vector_lengths(dg))
    ops = {n.name: n.op for n in dg.ir.nodes}
    for c in dg.carries:
        if isinstance(c.path[0], str):
            continue
        node = m.node_by_name.get(c.node)
        if node is None or c.path[0] >= len(node.input):
            continue
        if locate(m, node.input[c.path[0]], c.path[1] if len(c.path) > 1 else 0) is None:
            dg.solver.freeze(c.key, Reason(COMPUTED, f"size {c.value} computed by shape arithmetic at onnx node "
                                           f"'{c.node}'", op=ops.get(c.node, ""), node=c.node))


def input_dims(model: onnx.ModelProto, shapes: dict[str, tuple] | None = None, dynamic: int = 1,
               inner: int | None = None) -> dict[str, list[int]]:
    """Concrete dims of every graph input: the user's ``shapes`` where given (checked against the
    declared static dims), else the declared dim, else the size a weight fixes it at (onnx_weight_dims.py),
    else ``dynamic`` (``inner`` for dynamic dims past the first, where given: an image size). A declared dim
    of 0 or -1 is dynamic."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in inits and vi.type.HasField("tensor_type")]
    shapes = dict(shapes or {})
    unknown = sorted(set(shapes) - {vi.name for vi in inputs})
    if unknown:
        raise TraceError(f"input shape given for {unknown}, which the model does not have; its inputs are "
                         f"{[vi.name for vi in inputs]}")
    out = {}
    fixed = weight_dims(model) if len(shapes) < len(inputs) else {}
    for vi in inputs:
        declared = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else fixed.get(vi.name, {}).get(k)
                    for k, d in enumerate(vi.type.tensor_type.shape.dim)]
        if vi.name in shapes:
            given = [int(x) for x in shapes[vi.name]]
            if len(given) != len(declared) or any(g < 1 for g in given):
                raise TraceError(f"input '{vi.name}' has rank {len(declared)} (declared {_spell(declared)}); the given "
                                 f"shape {tuple(given)} does not fit it")
            bad = [k for k, (g, d) in enumerate(zip(given, declared)) if d is not None and g != d]
            if bad:
                raise TraceError(f"input '{vi.name}' declares dim {bad[0]} as {declared[bad[0]]}, the given shape "
                                 f"{tuple(given)} says {given[bad[0]]}")
            out[vi.name] = given
        else:
            out[vi.name] = [d if d is not None else (inner if inner is not None and k > 0 else dynamic)
                            for k, d in enumerate(declared)]
    return out


def probe_inputs(model: onnx.ModelProto, dynamic: int = 2, seed: int = 0, dims: dict[str, list[int]] | None = None,
                 like: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Deterministic example inputs: ``dims`` per input where given, else symbolic dims (and
    dims declared 0 or -1) set to ``dynamic``; integers in [0, 2), or within the range of the
    same input in ``like``."""
    rng = np.random.default_rng(seed)
    dims = dims if dims is not None else input_dims(model, dynamic=dynamic)
    feeds = {}
    inits = {i.name for i in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits or vi.name not in dims:
            continue
        shape = dims[vi.name]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        ref = like.get(vi.name) if like else None
        if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
            lo, hi = (int(ref.min()), int(ref.max()) + 1) if ref is not None and ref.size else (0, 2)
            feeds[vi.name] = rng.integers(lo, hi, shape).astype(dtype)
        else:
            scale = float(ref.std()) if ref is not None and ref.size > 1 else 1.0
            feeds[vi.name] = (rng.standard_normal(shape) * (scale or 1.0)).astype(dtype)
    return feeds


def _spell(dims: list) -> str:
    return "x".join("?" if d is None else str(d) for d in dims)


def concretize(model: onnx.ModelProto, size: int = 1, shapes: dict[str, list[int]] | None = None) -> onnx.ModelProto:
    """A copy whose symbolic input dims are fixed (to 1 by default, or to ``shapes``: every
    input's concrete dims), shapes inferred anew.

    Dynamic axes are batch and sequence positions, frozen for pruning anyway; with
    them static, reshapes that merge them with heads (batch*heads) become plain
    factorisations, and size-1 dims drop out of the coupling altogether.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    shapes = shapes if shapes is not None else input_dims(model, dynamic=size)
    for vi in m.graph.input:
        if vi.name not in shapes:
            continue
        for d, n in zip(vi.type.tensor_type.shape.dim, shapes[vi.name]):
            d.Clear()
            d.dim_value = int(n)
    del m.graph.value_info[:]
    for vi in m.graph.output:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            vi.type.tensor_type.ClearField("shape")
    return infer_at_sizes(m)  # in a child: at a size the model cannot take, onnx's inference may abort


def with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs ``names`` (how onnxruntime shows inner values)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output}
    for name in names:
        if name not in have:
            out.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return out


def _observed_shapes(model: onnx.ModelProto, names: list[str], original: onnx.ModelProto | None = None,
                     feeds: dict[str, np.ndarray] | None = None) -> dict[str, tuple]:
    """Run onnxruntime with every value as an output; the observed shapes.

    ``model`` has static inputs (:func:`concretize`); ``feeds`` (the user's example inputs,
    for inputs with a meaning) are used where given, typed random data elsewhere. Some
    models only load with their dynamic input dims (an If whose untaken branch cannot be
    typed at the fixed size): then the ``original`` model runs on the same feeds.
    """
    import onnxruntime as ort

    dims = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in model.graph.input}
    quiet = ort.SessionOptions()
    quiet.log_severity_level = 4  # a failure here is raised and reported (a size tried that does not run), not logged in red
    try:
        sess = ort.InferenceSession(with_outputs(model, names).SerializeToString(), quiet,
                                    providers=["CPUExecutionProvider"])
    except Exception:  # onnxruntime's own exception types; the original model's failure, if any, is raised
        if original is None:
            raise
        sess = ort.InferenceSession(with_outputs(original, names).SerializeToString(), quiet,
                                    providers=["CPUExecutionProvider"])
    inputs = probe_inputs(model, dims=dims)
    inputs.update({k: np.asarray(v) for k, v in (feeds or {}).items() if k in inputs})
    outs = sess.run(None, inputs)
    return {o.name: tuple(np.asarray(v).shape) for o, v in zip(sess.get_outputs(), outs)}


def _dims(shape: Any) -> tuple | None:
    if shape is None:
        return None
    return tuple(d if isinstance(d, int) and d >= 0 else (str(d) if d not in (None, -1) else None) for d in shape)


def _text_attributes(graph: onnx.GraphProto) -> None:
    """Blank string attributes that are not text (a sentencepiece model as a custom op's attribute),
    in the analysis copy: onnx-graphsurgeon decodes every one as UTF-8 and raised on them. No rule
    reads them; the rewrite edits the original model, where they stay."""
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.STRING and not _is_text(a.s):
                a.s = b"(binary)"
            elif a.type == onnx.AttributeProto.STRINGS and not all(_is_text(b) for b in a.strings):
                a.strings[:] = [b if _is_text(b) else b"(binary)" for b in a.strings]
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                _text_attributes(sub)


def _is_text(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def lower(model: onnx.ModelProto, shapes: dict[str, list[int]] | None = None,
          feeds: dict[str, np.ndarray] | None = None) -> Graph:
    """Lower an ONNX model into the IR, analysed at ``shapes`` (every input's concrete dims;
    by default dynamic dims fixed to 1); ``feeds``: example inputs for values only a run shows."""
    original, model = model, concretize(model, shapes=shapes)
    _text_attributes(model.graph)
    graph = gs.import_onnx(model)
    g = Graph(frontend="onnx")
    shapes: dict[str, tuple | None] = {}
    tensors = graph.tensors()
    for name, t in tensors.items():
        if name:
            shapes[name] = _dims(t.values.shape if isinstance(t, gs.Constant) else t.shape)
    # every input is static here, so a symbolic dim ('unk__22') is one shape inference lost track of
    holes = [n for n, s in shapes.items() if s is None or any(not isinstance(d, int) for d in s)]
    if holes:
        try:
            seen = _observed_shapes(model, [h for h in holes if not isinstance(tensors[h], gs.Constant)], original,
                                    feeds)
        except Exception as exc:
            producers = {o.name: n for n in graph.nodes for o in n.outputs}
            culprits = sorted({f"{producers[h].domain or 'ai.onnx'}::{producers[h].op} (node '{producers[h].name}')"
                               for h in holes if h in producers})
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TraceError(
                f"cannot tell the shapes of {len(holes)} value(s) (first: '{holes[0]}'): ONNX shape inference does "
                f"not know the op(s) {', '.join(culprits[:3]) or 'producing them'}, and onnxruntime could not run "
                f"the model to observe them ({first}). Replace or remove those ops, or give the model static "
                "value_info for their outputs.") from exc
        for h in holes:
            if h in seen:
                shapes[h] = seen[h]
    data: dict[str, tuple[int, ...]] = {}
    graph_inputs = {t.name for t in graph.inputs}
    fixed = {i for n in model.graph.node if n.doc_string == NOT_LEARNED for i in n.input[1:]}  # sliced, not ranked
    for name, t in sorted(tensors.items()):
        if not name:
            continue
        if isinstance(t, gs.Constant):
            vals = np.asarray(t.values)
            learned = name not in fixed and FILL_COPY not in name
            kind = "param" if vals.dtype.kind == "f" and vals.size > 1 and learned else "const"
            if vals.dtype.kind in "iu" and vals.size <= MAX_DATA:
                data[name] = tuple(int(x) for x in vals.reshape(-1))
            g.add_value(Value(name, tuple(vals.shape), str(vals.dtype), kind, name, data.get(name)))
        else:
            shape = shapes.get(name)
            if shape is None:
                raise TraceError(f"value '{name}' has no known shape even after running the model")
            dtype = str(np.dtype(t.dtype)) if t.dtype is not None else "float32"
            g.add_value(Value(name, shape, dtype, "input" if name in graph_inputs else "act"))
    g.inputs = [t.name for t in graph.inputs]
    g.outputs = [t.name for t in graph.outputs]
    for k, node in enumerate(graph.nodes):
        op = f"onnx.{node.op}" if node.domain in (None, "", "ai.onnx") else f"onnx.{node.domain}.{node.op}"
        name = node.name or f"{node.op}_{k}"
        attrs = {a: _attr(v) for a, v in node.attrs.items()}
        if node.op == "Constant":
            _constant_node(g, node, attrs, data)
        captured = [Ref(t) for t in _captured(node) if t in g.values]
        if captured:  # outer-scope values a subgraph reads: the rule must see them to freeze them
            attrs["__captured__"] = captured
        g.nodes.append(Node(name, op, tuple(Ref(i.name) if i.name else None for i in node.inputs), attrs,
                            [o.name for o in node.outputs], NodeMeta(source=f"onnx node '{name}'")))
    evaluate_int_tensors(g, data)
    return g


def _captured(node: gs.Node) -> list[str]:
    """Names of the values a node's subgraphs (If branches, Loop/Scan bodies) read from the
    enclosing graph: ONNX lists them nowhere in the node's inputs."""
    out: dict[str, None] = {}
    for v in node.attrs.values():
        for sub in (v if isinstance(v, list) else [v]):
            if not isinstance(sub, gs.Graph):
                continue
            local = {t.name for t in sub.inputs}
            for n in sub.nodes:
                local.update(o.name for o in n.outputs)
            for n in sub.nodes:
                reads = [t.name for t in n.inputs if t.name] + _captured(n)
                out.update(dict.fromkeys(r for r in reads if r not in local))
    return list(out)


def _attr(v: Any) -> Any:
    if isinstance(v, gs.Constant):
        return np.asarray(v.values).tolist()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (gs.Graph,)):
        return "<subgraph>"
    return v


def _constant_node(g: Graph, node: gs.Node, attrs: dict, data: dict) -> None:
    out = g.values[node.outputs[0].name]
    val = attrs.get("value", attrs.get("value_ints", attrs.get("value_int")))
    if val is not None:
        arr = np.asarray(val)
        if arr.dtype.kind in "iu" and arr.size <= MAX_DATA:
            data[out.name] = tuple(int(x) for x in arr.reshape(-1))
            out.data = data[out.name]
