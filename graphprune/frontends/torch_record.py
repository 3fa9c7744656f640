"""nn.Module -> traced program by recording one forward at torch's pre-dispatch key.

torch.export costs seconds per trace (fake tensors, a symbolic shape environment and
proxies on every op), and pruning traces several times (the model, then the rewrite's
proof). Recording a plain forward sees the same operators export's training IR holds
(``aten.conv2d``, ``aten.linear``, ``aten.scaled_dot_product_attention``: ops before
their decomposition) at the cost of one eager forward: a dispatch mode at the
pre-dispatch key is called once per operator the model calls, and the ops it runs
underneath are not seen.

A forward that reads tensor data into Python (``.item()``, ``bool(t)``) raises :class:`Unrecordable`, and
the caller falls back to torch.export, which reports it; an assert that holds and a branch on the model's
own state are recorded past (frontends/record_asserts.py). Export's flags are set while recording, so
libraries take the paths they take under export. The result is shaped like ``ExportedProgram.module()``:
placeholders for the inputs, ``get_attr`` for every weight, export's node metadata.
"""
from __future__ import annotations

import contextlib
import inspect
import operator
import weakref
from typing import Any

import torch

from ..util.gc_pause import reclaim
from ..util.torch_compat import (
    PreDispatchModeBase,
    data_reads,
    export_flags,
    init_predispatch_mode,
    kept_attributes,
    leaf_paths,
    no_python_dispatcher,
    own_buffers,
    own_params,
    python_dispatcher,
    reparametrize,
    tree_flatten,
    tree_leaves,
    tree_map,
)
from . import meta_shapes
from .module_stack import ModuleStack, user_frame
from .record_asserts import asserted, drop_asserted, state_read
from .record_sequences import stacked_sequences
from .torch_export import is_tensor_cache
from .torch_opaque import Unrecordable, Whole, handed_out, quiet_run, recorded_whole
from .trace import Trace

# Ops whose result depends on tensor data in a way a static graph cannot replay.
_DATA_DEPENDENT = {"aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.nonzero", "aten.equal",
                   "aten.masked_select", "aten.unique", "aten._unique2", "aten.unique_consecutive",
                   "aten.nonzero_static", "aten.allclose", "aten.is_same_size", "aten.tolist",
                   "aten.repeat_interleave.Tensor", "aten.repeat_interleave.self_Tensor"}  # int repeats are static


def _meta_like(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(t.shape, dtype=t.dtype, device="meta")


class _Recorder(PreDispatchModeBase):
    def __init__(self, graph: torch.fx.Graph, env: "_Values", constant, modules: ModuleStack,
                 on_meta: bool) -> None:
        init_predispatch_mode(self)
        self.graph, self.env, self.constant, self.modules = graph, env, constant, modules
        self.on_meta = on_meta
        self.device: torch.device | None = None
        self.asserted: list = []  # nodes only an assert statement read (frontends/record_asserts.py)
        self.tensors: dict[str, torch.Tensor] = {}  # get_attr target -> what the forward reads (stand-ins, constants)
        self.shared: set[int] = set()  # storages of the inputs and parameters: a constant on one is no state
        self.state: list[str] = []  # buffers a branch read: the forward must leave them as they were
        self.quiet = 0  # > 0 while a module recorded whole (frontends/torch_opaque.py) runs: nothing is recorded
        self.whole: Whole | None = None
        self.inside: dict[int, tuple] = {}  # what the modules recorded whole made (torch_opaque.handed_out)

    @contextlib.contextmanager
    def paused(self, path: str, parent: str, allowed: list):
        self.quiet, self.whole = self.quiet + 1, Whole(path, parent, allowed)
        try:
            yield
        finally:
            self.quiet, self.whole = self.quiet - 1, None

    def _input_of(self, t: Any) -> str | None:
        """The model input whose values ``t`` holds, through a few views or copies of it (``sizes[i]``)."""
        node = self.env.get(t) if isinstance(t, torch.Tensor) else None
        for _ in range(4):
            if node is None or node.op == "placeholder":
                break
            node = next((a for a in node.args if isinstance(a, torch.fx.Node)), None)
        return node.meta.get("input_path", node.target) if node is not None and node.op == "placeholder" else None

    def from_input(self, t: Any) -> bool:
        """Whether ``t`` was computed from a model input (a read of a buffer's or a constant's values is the same for
        every input: recorded past, as export would constant-fold it)."""
        todo, seen = [self.env.get(t)] if isinstance(t, torch.Tensor) else [], set()
        while todo:
            node = todo.pop()
            if node is None or node in seen:
                continue
            if node.op == "placeholder":
                return True
            seen.add(node)
            todo += node.all_input_nodes
        return False

    def read_data(self, t: Any, name: str) -> None:
        """A read of ``t``'s data into Python (``.item()``; ``.numpy()``, which dispatches nothing: TimesNet's periods)
        is refused, but for an assert that holds and a branch on the model's state (frontends/record_asserts.py)."""
        if self.quiet:
            return
        where, given = user_frame(), self._input_of(t)
        if not self.on_meta and (asserted(name, where) or state_read(self, t)):  # demucs' assert; ``if self.initted:``
            self.asserted.append(self.env.get(t))
            return
        raise Unrecordable(f"the forward reads tensor data ({name})" + (f" at {where}" if where else "") + (
            f"; the values read are those of the input {given if '[' in given else repr(given)}: where the model "
            "also takes it as a Python list or number, pass it so (Pixtral's image_sizes), and its values are "
            "constants of the trace"
            if given else ""), module=self.modules.stack[-1][1][0])

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)  # 'aten.linear.default' (what meta_shapes keys on; the IR drops the overload)
        if self.quiet:
            with no_python_dispatcher():
                return quiet_run(self, func, args, kwargs, lambda: func(*args, **kwargs))
        if name in _DATA_DEPENDENT or name.rpartition(".")[0] in _DATA_DEPENDENT:
            self.read_data(args[0] if args else None, name)
            with no_python_dispatcher():
                return func(*args, **kwargs)
        with no_python_dispatcher():  # the op's own kernels: C++ meta where torch has one
            out = meta_shapes.run(name, func, args, kwargs) if self.on_meta else func(*args, **kwargs)
            # the node's stand-in (made here: a meta tensor costs twice as much under the Python dispatcher)
            if isinstance(out, torch.Tensor):
                val = _meta_like(out)
            elif isinstance(out, (tuple, list)) and any(isinstance(o, torch.Tensor) for o in out):
                val = [(_meta_like(o) if isinstance(o, torch.Tensor) else o) for o in out]
            else:
                val = out
        node = self.graph.create_node("call_function", func, self.args_of(args), self.args_of(kwargs),
                                      name=func.overloadpacket.__name__)
        meta = node.meta
        meta["nn_module_stack"] = self.modules.current
        frame = user_frame()
        if frame is not None:
            meta["stack_trace"] = frame
        meta["val"] = val
        if isinstance(out, torch.Tensor):
            self.env[out] = node
        elif isinstance(val, list):
            for i, o in enumerate(out):
                if isinstance(o, torch.Tensor):
                    item = self.graph.create_node("call_function", operator.getitem, (node, i))
                    item.meta["val"] = val[i]
                    self.env[o] = item
        return out

    def args_of(self, a: Any) -> Any:
        if isinstance(a, torch.Tensor):
            node = self.env.get(a)
            return node if node is not None else self.constant(a)
        if isinstance(a, (list, tuple)):
            return type(a)(self.args_of(x) for x in a)
        if isinstance(a, dict):
            return {k: self.args_of(v) for k, v in a.items()}
        if isinstance(a, torch.device) and a.type == "meta" and self.device is not None:
            return self.device  # a factory op on the stand-ins: replay it where the model lives
        if isinstance(a, torch.SymInt):
            raise Unrecordable("a symbolic size reached the recorder")
        return a


class _Values:
    """Tensor -> the fx node that made it, by identity, holding the tensor weakly: a strong
    reference would make factory functions (``torch.arange``) hand the forward a shallow
    copy instead of the tensor recorded (autograd's make_variable copies a tensor that has
    other owners). A dead entry never matches a new tensor that reuses its id."""

    def __init__(self) -> None:
        self.nodes: dict[int, tuple[weakref.ref, torch.fx.Node]] = {}

    def get(self, t: torch.Tensor) -> torch.fx.Node | None:
        entry = self.nodes.get(id(t))
        return entry[1] if entry is not None and entry[0]() is t else None

    def __setitem__(self, t: torch.Tensor, node: torch.fx.Node) -> None:
        self.nodes[id(t)] = (weakref.ref(t), node)


def _walk(model: torch.nn.Module):
    """One pass over the modules: (weights, aliases, tensor owners, tensor caches).

    weights: (kind, path, tensor) in ``named_parameters()`` then ``named_buffers()`` order;
    aliases: every path of every weight (tied names included) -> the tensor; owners: id of a
    tensor kept in a plain attribute -> its path; caches: dicts of tensors (see
    :func:`~graphprune.frontends.torch_export.clear_tensor_caches`)."""
    params, buffers, aliases, owners, caches = [], [], {}, {}, []
    seen: set[int] = set()
    for mpath, mod in model.named_modules(remove_duplicate=False):
        prefix = f"{mpath}." if mpath else ""
        for store, out in ((own_params(mod), params), (own_buffers(mod), buffers)):
            for name, t in store.items():
                if t is None:
                    continue
                aliases[prefix + name] = t
                if id(t) not in seen:
                    seen.add(id(t))
                    out.append((prefix + name, t))
        for attr, val in vars(mod).items():
            if isinstance(val, torch.Tensor):
                owners.setdefault(id(val), prefix + attr)
            elif is_tensor_cache(attr, val):
                caches.append(val)
    weights = [("param", p, t) for p, t in params] + [("buffer", p, t) for p, t in buffers]
    return weights, aliases, owners, caches


def _input_names(model: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[list[str], list[str]]:
    """Placeholder names for the flattened inputs: forward()'s parameter names, as export's; and each input's path
    as Python spells it (``x['encoder_lengths']`` where the name is ``x_3``)."""
    try:
        params = [p.name for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names: list[str] = []
    paths: list[str] = []
    for base, a in [(params[i] if i < len(params) else f"arg{i}", a) for i, a in enumerate(args)] + list(kwargs.items()):
        leaves = tree_leaves(a)
        names += [base] if len(leaves) == 1 and leaves[0] is a else [f"{base}_{j}" for j in range(len(leaves))]
        paths += [base + p for p in leaf_paths(a)]
    return names, paths


def _placeholders(graph: torch.fx.Graph, env: _Values, model: torch.nn.Module, args: tuple, kwargs: dict):
    """A placeholder per flattened input, named as export names them; returns the inputs' pytree spec."""
    flat, in_spec = tree_flatten((args, kwargs))
    names, paths = _input_names(model, args, kwargs)
    if len(names) != len(flat) or len(paths) != len(flat):
        names = paths = [f"arg{i}" for i in range(len(flat))]
    for name, t, path in zip(names, flat, paths):
        ph = graph.placeholder(name)
        ph.meta["input_path"] = path  # x['encoder_lengths'], where its name is x_3
        if isinstance(t, torch.Tensor):
            ph.meta["val"] = _meta_like(t)
            env[t] = ph
    return in_spec


def _weight_nodes(graph: torch.fx.Graph, env: _Values, weights: list, aliases: dict, device: str,
                  root: dict[str, torch.Tensor], kinds: dict[str, tuple[str, str]]) -> dict[str, torch.Tensor]:
    """A get_attr node per weight (into ``root`` and ``kinds``), ahead of the placeholders.
    Returns the stand-ins the recorded forward sees, by every path of every weight."""
    by_id: dict[int, torch.Tensor] = {}  # id of a weight -> what the recorded forward sees instead
    first = next(iter(graph.nodes), None)
    for kind, path, t in weights:
        val = _meta_like(t)
        new = val if device == "meta" else t if kind == "param" else t.clone()  # (a meta stand-in is never written)
        by_id[id(t)] = new
        root[path] = t
        name = ("p_" if kind == "param" else "b_") + path.replace(".", "_")
        with graph.inserting_before(first) if first is not None else contextlib.nullcontext():
            node = graph.create_node("get_attr", path, name=name)
        node.meta["val"] = val
        kinds[node.name] = (kind, path)
        env[new] = node
    return {path: by_id[id(t)] for path, t in aliases.items()}  # tied names get the one stand-in


def _run_recorded(model: torch.nn.Module, args: tuple, kwargs: dict, stand_in: dict[str, torch.Tensor],
                  recorder: _Recorder, stack: ModuleStack, caches: list[dict]) -> Any:
    """Run the forward on the stand-ins under the recorder; returns its output."""
    for cache in caches:
        cache.clear()  # a cache filled earlier would be read instead of the stand-ins
    pre = torch.nn.modules.module.register_module_forward_pre_hook(stack.push)
    post = torch.nn.modules.module.register_module_forward_hook(stack.pop, always_call=True)
    try:
        with torch.no_grad(), export_flags(), kept_attributes(model), reparametrize(model, stand_in), python_dispatcher(), \
                data_reads(lambda t, how: recorder.from_input(t) and recorder.read_data(t, f".{how}()")), \
                stacked_sequences(), recorder:
            return model(*args, **kwargs)
    except Unrecordable:
        raise
    except Exception as exc:  # whatever the forward raises, export will say it better
        raise Unrecordable(f"{type(exc).__name__}: {exc}") from exc
    finally:
        pre.remove()
        post.remove()
        for cache in caches:
            cache.clear()  # and one the recorded forward filled holds stand-ins


def record(model: torch.nn.Module, args: tuple, kwargs: dict | None = None, device: str | None = None,
           opaque: tuple[str, ...] = (), reads: tuple[tuple[str, str], ...] = ()) -> Trace:
    """Record one forward of ``model`` without changing it.

    The forward runs on stand-ins for the weights: meta tensors by default (no arithmetic,
    and the model's buffers cannot be written), or with ``device="real"`` the parameters
    themselves and copies of the buffers; ``opaque``: paths of modules recorded as one call each, on the real
    weights (frontends/torch_opaque.py), ``reads`` saying why for each. Raises :class:`Unrecordable` where only
    torch.export can tell what is wrong (a data-dependent forward, a failing one)."""
    kwargs = dict(kwargs or {})
    device = device or "meta"
    graph = torch.fx.Graph()
    env = _Values()
    kinds: dict[str, tuple[str, str]] = {}
    home = next((t.device for t in tree_leaves((tuple(args), kwargs)) if isinstance(t, torch.Tensor)),
                next((t.device for t in model.parameters()), torch.device("cpu")))
    if device == "meta":
        args, kwargs = tree_map(lambda t: t.to("meta") if isinstance(t, torch.Tensor) else t, (tuple(args), kwargs))
    in_spec = _placeholders(graph, env, model, tuple(args), kwargs)
    user_inputs = [n.name for n in graph.nodes]
    weights, aliases, owners, caches = _walk(model)
    root: dict[str, torch.Tensor] = {}  # get_attr target -> the model's tensor (what the interpreter reads)
    stand_in = _weight_nodes(graph, env, weights, aliases, device, root, kinds)
    n_weights = len(root)

    def constant(t: torch.Tensor) -> torch.fx.Node:
        if t.device.type == "meta":  # made in the forward from Python values (x[..., [-2]]'s index list):
            # a replay would read uninitialised memory for it; recorded on the real weights, it has values
            raise Unrecordable("a tensor the forward makes from Python values has no values on the meta device")
        handed_out(recorder, t)
        target = f"_tensor_constant{len(root) - n_weights}"
        root[target] = t
        node = graph.create_node("get_attr", target, name=f"c_{target}")
        node.meta["val"] = _meta_like(t)
        kinds[node.name] = ("const", owners.get(id(t), target))
        env[t] = node
        recorder.tensors[target] = t
        return node

    reclaim()  # a forward recorded on the real weights drops its values in cycles
    stack = ModuleStack(model)
    recorder = _Recorder(graph, env, constant, stack, device == "meta")
    recorder.device = home
    recorder.tensors.update(stand_in)
    recorder.shared = {t.untyped_storage().data_ptr() for t in [*tree_leaves((tuple(args), kwargs)),
                       *model.parameters()] if isinstance(t, torch.Tensor) and t.device.type != "meta"}
    with recorded_whole(model, opaque, recorder, _meta_like, dict(reads)):
        out = _run_recorded(model, args, kwargs, stand_in, recorder, stack, caches)
    if changed := [p for p in dict.fromkeys(recorder.state) if not torch.equal(stand_in[p], root[p])]:
        raise Unrecordable(f"the forward branches on buffer '{changed[0]}', which it also writes")
    outs = []
    for t in tree_leaves(out):
        if isinstance(t, torch.Tensor):
            node = env.get(t)
            outs.append(node if node is not None else constant(t))
        elif any(isinstance(v, torch.Tensor) for v in getattr(t, "__dict__", {}).values()):  # the oracle would see none
            raise Unrecordable(f"the forward returns a {type(t).__name__} holding tensors pytree does not flatten")
    graph.output(tuple(outs))
    drop_asserted(graph, recorder.asserted)
    return Trace(graph, in_spec, user_inputs, kinds, device=device, root=root, hidden=_held(stack, aliases), opaque=opaque,
                 reads=reads)


def _held(stack: ModuleStack, aliases: dict[str, torch.Tensor]) -> tuple[str, ...]:
    """Registered paths of the tensors that called modules outside the registry hold (backends/torch_holders.py)."""
    path_of, held = {id(t): p for p, t in reversed(list(aliases.items()))}, stack.hidden.values()
    return tuple(sorted({path_of[id(t)] for m in held for t in [*own_params(m).values(), *own_buffers(m).values()]
                         if t is not None and id(t) in path_of}))
