"""Traced torch programs -> IR: torch.export (non-strict, the fallback of the recorder in
frontends/torch_record.py) and the lowering both kinds of graph share.

Parameters may live on the ``meta`` device: analysis needs shapes, not values.
Every parameter, buffer and lifted constant keeps its module path; tied weights
(one tensor under several names) are recorded as aliases.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import operator
from typing import Any

import torch

from ..errors import TraceError
from ..io.onnx_export import export_error_text, quiet_torch
from ..ir import Graph, Node, NodeMeta, Ref, Value
from ..util.torch_compat import is_op_overload, is_op_packet, kept_attributes, op_qualname, tree_leaves
from .torch_opaque import NOTE

_SKIP_OPS = {"aten._assert_tensor_metadata", "aten._assert_scalar", "aten.sym_size", "aten.sym_numel",
             "aten.sym_stride", "aten.sym_storage_offset", "aten._assert_async", "aten.sym_constrain_range_for_size"}


def export_program(model: torch.nn.Module, args: tuple, kwargs: dict | None = None) -> torch.export.ExportedProgram:
    """Run torch.export, turning its failures into a :class:`TraceError` that says what to do."""
    if not isinstance(args, tuple):
        args = (args,)

    clear_tensor_caches(model)
    try:  # a failing export prints its whole FX graph to stderr (Longformer: 520 lines); the error says it in one
        with quiet_torch(), contextlib.redirect_stderr(io.StringIO()), kept_attributes(model):
            return torch.export.export(model, args, kwargs=kwargs or {}, strict=False)
    except Exception as exc:  # torch raises many exception types from deep inside tracing
        raise TraceError(
            f"torch.export could not trace {type(model).__name__} with the given example inputs: "
            f"{type(exc).__name__}: {export_error_text(exc)}. Check that the example inputs match forward()'s signature "
            f"and shapes, and that forward() has no data-dependent control flow.{_list_hint(model, args)}") from exc


def _list_hint(model: torch.nn.Module, args: tuple) -> str:
    """A list of tensors given as the example inputs is one argument; said where it failed and where forward()
    requires at least that many positional arguments (NaViT's takes one list of lists of images: no hint there)."""
    if len(args) != 1 or not isinstance(args[0], list) or not all(isinstance(a, torch.Tensor) for a in args[0]):
        return ""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return ""
    required = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    if len(required) < len(args[0]) and not any(p.kind == p.VAR_POSITIONAL for p in params):
        return ""  # forward(xs, mask=None) takes the list as its one input
    return (f" The example inputs were one list of {len(args[0])}, passed to forward() as one argument: give a "
            "tuple, (x, y), where they are separate arguments.")


def clear_tensor_caches(model: torch.nn.Module) -> list[str]:
    """Empty the dict caches of tensors an earlier forward left on modules (LeViT's
    ``attention_bias_cache``): torch.export would lift their tensors as constants that no
    rewrite can slice, and a pruned model must not keep a stale one. The modules rebuild them
    from their parameters on the next forward. Returns the caches cleared."""
    cleared = []
    for path, mod in model.named_modules():
        for attr, val in list(vars(mod).items()):
            if is_tensor_cache(attr, val):
                val.clear()
                cleared.append(f"{path}.{attr}" if path else attr)
    return cleared


def is_tensor_cache(attr: str, val: Any) -> bool:
    """A module attribute that caches tensors a forward computed: a non-empty dict of
    tensors under a name with "cache" in it."""
    return "cache" in attr.lower() and isinstance(val, dict) and bool(val) \
        and all(isinstance(v, torch.Tensor) for v in val.values())


def op_id(target: Any) -> str:
    """Canonical op id: 'aten.conv2d' for torch.ops.aten.conv2d.default."""
    if is_op_overload(target):
        ns, name = op_qualname(target).split("::")
        return f"{ns}.{name}"
    if is_op_packet(target):
        return f"aten.{target.__name__}"
    return f"python.{getattr(target, '__name__', repr(target))}"


def _shape(t: Any) -> tuple:
    return tuple(int(d) if isinstance(d, int) or (hasattr(d, "node") and d.node.is_constant()) else str(d)
                 for d in t.shape)


def _source_line(meta: dict) -> str | None:
    trace = meta.get("stack_trace")
    if not trace:
        return None
    lines = [ln.strip() for ln in trace.strip().splitlines() if ln.strip().startswith("File ")]
    return lines[-1] if lines else None


def lower(ep: torch.export.ExportedProgram, model: torch.nn.Module | None = None) -> Graph:
    """Lower an exported program into the IR."""
    g = Graph(frontend="torch")
    sig = ep.graph_signature
    kind_of: dict[str, tuple[str, str]] = {}
    for spec in sig.input_specs:
        k = spec.kind.name
        if k == "PARAMETER":
            kind_of[spec.arg.name] = ("param", spec.target)
        elif k == "BUFFER":
            kind_of[spec.arg.name] = ("buffer", spec.target)
        elif k in ("CONSTANT_TENSOR", "CUSTOM_OBJ"):
            kind_of[spec.arg.name] = ("const", spec.target)
        elif k == "USER_INPUT":
            kind_of[spec.arg.name] = ("input", spec.arg.name)
    names: dict[str, Any] = {}  # fx node name -> IR value name (or list of names for tuples)
    _lower_nodes(g, ep.graph_module, ep.graph.nodes, names, kind_of, prefix="")
    if model is not None:
        g.aliases = tied_aliases(model)
    return g


def lower_trace(trace, model: torch.nn.Module | None = None) -> Graph:
    """Lower a :class:`~graphprune.frontends.torch_record.Trace` (recorded, or exported)."""
    if trace.ep is not None:
        return lower(trace.ep, model)
    g = Graph(frontend="torch")
    kind_of = dict(trace.kinds)
    for name in trace.user_inputs:
        kind_of[name] = ("input", name)
    _lower_nodes(g, None, trace.graph.nodes, {}, kind_of, prefix="")  # recorded: no wrapped subgraphs
    if model is not None:
        g.aliases = tied_aliases(model)
    return g


# Higher-order ops that only wrap a subgraph in a context (no_grad around RoPE tables,
# autocast): their bodies are inlined so the channels flowing through them are seen.
WRAPPERS = {"python.wrap_with_set_grad_enabled", "python.wrap_with_autocast"}


def wrapped_body_index(node: torch.fx.Node) -> int:
    """Position of a wrapper's subgraph argument: its context arguments come before it (one
    for set_grad_enabled, four for autocast), its operands after it."""
    return next(i for i, a in enumerate(node.args) if isinstance(a, torch.fx.Node) and a.op == "get_attr")


def _lower_nodes(g: Graph, gm: torch.fx.GraphModule | None, nodes, names: dict[str, Any],
                 kind_of: dict[str, tuple[str, str]], prefix: str) -> list:
    """Lower fx ``nodes`` into ``g``; values of an inlined subgraph are named ``prefix + name``.
    Returns the IR names the graph's output node returns (for inlining)."""
    returned: list = []
    for node in nodes:
        if node.op in ("placeholder", "get_attr") and not prefix:  # an inlined body's are bound by the caller
            _lower_input(g, node, names, kind_of)
        elif node.op == "output" and prefix:
            returned = [names.get(a.name) if isinstance(a, torch.fx.Node) else None
                        for a in tree_leaves(node.args[0])]
        elif node.op == "output":
            for out in tree_leaves(node.args[0]):
                if isinstance(out, torch.fx.Node) and isinstance(names.get(out.name), str):
                    g.outputs.append(names[out.name])
        elif node.op == "call_function":
            _lower_call(g, gm, node, names, kind_of, prefix)
    return returned


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def _lower_input(g: Graph, node: torch.fx.Node, names: dict[str, Any], kind_of: dict[str, tuple[str, str]]) -> None:
    """A placeholder, or a recorded trace's weight (a get_attr), as an IR value."""
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return
    if node.op == "get_attr":
        if node.name not in kind_of:
            return
        kind, source = kind_of[node.name]  # a recorded trace's weights (frontends/torch_record.py)
    else:
        kind, source = kind_of.get(node.name, ("input", node.name))
    g.add_value(Value(node.name, _shape(val), _dtype(val), kind, source))
    names[node.name] = node.name
    if node.op == "placeholder" and kind == "input":
        g.inputs.append(node.name)


def _ir_arg(a: Any, names: dict[str, Any]) -> Any:
    """An fx argument as the IR spells it: a Ref to a lowered value, 'sym:' for any other
    node or symbolic size, a string for torch's dtype/device/layout."""
    if isinstance(a, torch.fx.Node):
        mapped = names.get(a.name)
        if isinstance(mapped, str):
            return Ref(mapped)
        return f"sym:{a.name}"
    if isinstance(a, (list, tuple)):
        return [_ir_arg(x, names) for x in a]
    if isinstance(a, (torch.dtype, torch.device, torch.memory_format, torch.layout)):
        return str(a)
    if isinstance(a, torch.SymInt):
        return f"sym:{a}"
    return a


def _node_meta(node: torch.fx.Node) -> NodeMeta:
    """Where a node comes from: its module's path and type, its source line, the modules around it."""
    stack = node.meta.get("nn_module_stack") or {}
    module_path, module_type = ("", "")
    if stack:
        module_path, module_type = list(stack.values())[-1]
        module_type = module_type if isinstance(module_type, str) else getattr(module_type, "__qualname__", "")
    return NodeMeta(module_path, module_type, _source_line(node.meta),
                    tuple(path for path, _ in stack.values()),  # outermost first: depth pruning's module map
                    node.meta.get(NOTE, ""))


def _inline_wrapper(g: Graph, gm: torch.fx.GraphModule | None, node: torch.fx.Node, names: dict[str, Any],
                    kind_of: dict[str, tuple[str, str]], prefix: str) -> list[str]:
    """Lower a wrapper's body in place of the wrapper; returns the IR names of its outputs."""
    at = wrapped_body_index(node)
    sub = getattr(gm, node.args[at].target)
    inner: dict[str, Any] = {}
    for ph, a in zip([n for n in sub.graph.nodes if n.op == "placeholder"], node.args[at + 1:]):
        inner[ph.name] = names.get(a.name) if isinstance(a, torch.fx.Node) else None
    outs = _lower_nodes(g, sub, sub.graph.nodes, inner, kind_of, prefix + node.name + "/")
    return [o or "" for o in outs]


def _lower_call(g: Graph, gm: torch.fx.GraphModule | None, node: torch.fx.Node, names: dict[str, Any],
                kind_of: dict[str, tuple[str, str]], prefix: str) -> None:
    """Lower one call_function node: a getitem is resolved to the value it picks, a wrapper is
    inlined, any other op becomes an IR node with a value per tensor output."""
    if node.target is operator.getitem:
        src = names.get(node.args[0].name)
        if isinstance(src, list) and isinstance(node.args[1], int):
            names[node.name] = src[node.args[1]]
        return
    op = op_id(node.target)
    if op in _SKIP_OPS:
        return
    if op in WRAPPERS:
        names[node.name] = _inline_wrapper(g, gm, node, names, kind_of, prefix)
        return
    val = node.meta.get("val")
    multi = isinstance(val, (list, tuple))
    outs: list[str] = []
    for i, v in enumerate(val if multi else [val]):
        if isinstance(v, torch.Tensor):
            # multi-output ops keep positional output names so rules can index them
            name = f"{prefix}{node.name}.{i}" if multi else prefix + node.name
            g.add_value(Value(name, _shape(v), _dtype(v), "act"))
            outs.append(name)
        else:
            outs.append("")
    if not any(outs):
        return
    names[node.name] = outs if multi else outs[0]
    g.nodes.append(Node(prefix + node.name, op, tuple(_ir_arg(a, names) for a in node.args),
                        {k: _ir_arg(v, names) for k, v in node.kwargs.items()}, [o for o in outs if o],
                        _node_meta(node)))


def tied_aliases(model: torch.nn.Module) -> dict[str, list[str]]:
    """FQN -> all FQNs sharing the same tensor (tied embeddings, shared layers)."""
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    for name, b in model.named_buffers(remove_duplicate=False):
        by_id.setdefault(id(b), []).append(name)
    out: dict[str, list[str]] = {}
    for group in by_id.values():
        for name in group:
            out[name] = group
    return out
