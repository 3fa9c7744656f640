"""Run a traced torch program step by step: the masked interpreter of the oracle, weight
overrides and captures.

One interpreter serves the oracle (masks), calibration (captures at sites) and
compensation (masks, updated weights, and a walk through the graph site by site,
every calibration batch advanced to the same node before the next weight is
refit). Each batch keeps only its live values (those a later node still reads),
so memory is the calibration set times the widest cut of the graph, not its depth.
"""
from __future__ import annotations

import copy
import inspect
import operator
from typing import Any, Callable, Iterable

import torch

from ..errors import PlanError, TraceError
from ..frontends.torch_export import WRAPPERS, op_id, wrapped_body_index
from ..frontends.torch_trace import trace_model
from ..util.torch_compat import fx_flatten_spec, tree_map
from .slot_masks import input_shapes
from .trace_align import aligned

# ops whose output is (or may be) a view of their first input: a write into the view lands in the input too
_VIEWS = frozenset(f"aten.{op}" for op in (
    "slice narrow select view _unsafe_view unsqueeze squeeze transpose permute t alias expand as_strided diagonal "
    "unflatten view_as_real view_as_complex to contiguous detach type_as view_as movedim flatten reshape").split())


# ... and those returning several views of it (taken by getitem)
_SPLITS = frozenset(f"aten.{op}" for op in "chunk split split_with_sizes unbind tensor_split".split())


def _written_in_place(gm: torch.fx.GraphModule) -> frozenset[str]:
    """Names of the nodes whose value an in-place op (``copy_``, ``add_``, ...) writes into, and, where those are
    views of a tensor the replay makes itself (``out = zeros(...); out[:, :, :m, :m] = v``: slice, slice, copy_),
    the views between: masked with a copy, the first slice would take the write. A chain rooted at the model's
    own tensors (a buffer written through ``self.mem[1, :2] = h``) or an input keeps to its target: masking the
    views above it in place would zero the buffer itself. Kept on the module, since every forked walk (one per
    scored candidate) builds an interpreter over the same graph."""
    written = gm.__dict__.get("_graphprune_written")
    if written is None:
        nodes = list(gm.graph.nodes)
        out: set[str] = set()
        for n in nodes:
            if not (n.op == "call_function" and n.args and isinstance(n.args[0], torch.fx.Node)
                    and op_id(n.target).endswith("_") and not op_id(n.target).endswith("__")):
                continue
            chain, at = [n.args[0]], n.args[0]
            while at.op == "call_function" and at.args and isinstance(at.args[0], torch.fx.Node) and (
                    op_id(at.target) in _VIEWS or (at.target is operator.getitem and at.args[0].op == "call_function"
                                                   and op_id(at.args[0].target) in _SPLITS)):
                at = at.args[0]
                chain.append(at)
            fresh = at.op == "call_function" and op_id(at.target) not in _VIEWS | _SPLITS  # made by the replay (zeros, an op)
            out.update(c.name for c in (chain if fresh else chain[:1]))
        written = gm.__dict__["_graphprune_written"] = frozenset(out)
    return written


class _MaskedInterpreter(torch.fx.Interpreter):
    def __init__(self, gm: torch.fx.GraphModule, masks: dict[str, list[tuple[int, Any]]],
                 prefix: str = "", inputs: dict | None = None) -> None:
        super().__init__(gm)
        self.masks = masks
        self.inputs = input_shapes(gm) if inputs is None else inputs  # a mask over (batch x heads) follows the batch
        self.prefix = prefix  # inlined subgraphs' values are named "<wrapper node>/<node>" in the IR
        self.written = _written_in_place(gm)

    def run_node(self, n: torch.fx.Node) -> Any:
        if n.op == "call_function" and op_id(n.target) in WRAPPERS:
            return self._run_wrapper(n)
        out = super().run_node(n)
        if n.op != "call_function" or n.target is operator.getitem:
            return out
        if isinstance(out, (tuple, list)):
            return type(out)(self._mask(f"{self.prefix}{n.name}.{i}", o, in_place=n.name in self.written)
                             for i, o in enumerate(out))
        return self._mask(self.prefix + n.name, out, in_place=n.name in self.written)

    def _run_wrapper(self, n: torch.fx.Node) -> Any:
        """Run a context-wrapping higher-order op's body with masks inside it too."""
        args, _ = self.fetch_args_kwargs_from_env(n)
        at = wrapped_body_index(n)
        sub = args[at]
        ctx = (torch.set_grad_enabled(bool(args[0])) if op_id(n.target) == "python.wrap_with_set_grad_enabled"
               else torch.autocast(*args[:at]))
        with ctx:
            return _MaskedInterpreter(sub, self.masks, f"{self.prefix}{n.name}/", self.inputs).run(*args[at + 1:])

    def _mask(self, name: str, t: Any, in_place: bool = False) -> Any:
        if name not in self.masks or not isinstance(t, torch.Tensor) or not (t.is_floating_point() or t.is_complex()):
            return t  # (integers are indices and sizes; a spectrum is complex)
        for d, slot in self.masks[name]:
            m = slot.at(t.shape[d], self.inputs)  # another batch size where the batch is merged with heads
            shape = [1] * t.dim()
            shape[d] = -1
            if in_place:  # a view an in-place op writes through (a slice copy_ fills): a copy would take the write
                t.masked_fill_(~m.to(t.device).view(shape), 0)
            else:
                t = torch.where(m.to(t.device).view(shape), t, torch.zeros((), dtype=t.dtype, device=t.device))
        return t


class _Runner(_MaskedInterpreter):
    def __init__(self, gm: torch.fx.GraphModule, masks: dict, overrides: dict[str, torch.Tensor]) -> None:
        super().__init__(gm, masks)
        self.overrides = overrides  # parameter path -> tensor used instead of the model's
        self.extra_bias: dict[str, tuple[int, torch.Tensor]] = {}  # node -> (channel dim, bias): added biases

    def run_node(self, n: torch.fx.Node) -> Any:
        out = super().run_node(n)
        if n.name in self.extra_bias:
            dim, b = self.extra_bias[n.name]
            shape = [1] * out.dim()
            shape[dim] = -1
            out = out + b.to(out.dtype).view(shape)
        return out

    def get_attr(self, target: str, args, kwargs) -> Any:
        if target in self.overrides:
            out = self.overrides[target]
        else:
            out = super().get_attr(target, args, kwargs)
        # weights a recurrence hides its state behind are masked too (keyed "param:<path>")
        return self._mask(f"param:{target}", out)


class _Lane:
    """One traced graph and its interpreter: batches of one input shape run on one lane."""

    def __init__(self, gm: torch.fx.GraphModule, masks: dict, overrides: dict[str, torch.Tensor],
                 extra_bias: dict) -> None:
        self.gm = gm
        self.nodes = list(gm.graph.nodes)
        self.runner = _Runner(gm, masks, overrides)
        self.runner.extra_bias = extra_bias  # shared by every lane: biases a refit added, by node name
        position = {n: i for i, n in enumerate(self.nodes)}
        last: dict[int, int] = {}
        for i, n in enumerate(self.nodes):
            for a in n.all_input_nodes:
                last[position[a]] = i
        self.dies_at: dict[int, list[torch.fx.Node]] = {}
        for j, i in last.items():
            self.dies_at.setdefault(i, []).append(self.nodes[j])

    def fork(self, masks: dict, overrides: dict[str, torch.Tensor], extra_bias: dict) -> "_Lane":
        new = copy.copy(self)
        new.runner = _Runner(self.gm, masks, overrides)
        new.runner.extra_bias = extra_bias
        return new


class Walk:
    """Every calibration batch, advanced through the graph in lockstep.

    ``trace_for(batch)`` gives each batch the graph traced at its own input shapes (a batch
    size or sequence length other than the example's); those graphs are the same op for op
    (graphprune.program.torch_program checks), so node indices and names are shared."""

    def __init__(self, trace, batches: Iterable[tuple[tuple, dict]],
                 masks: dict | None = None, overrides: dict[str, torch.Tensor] | None = None,
                 trace_for: Callable[[tuple[tuple, dict]], Any] | None = None) -> None:
        batches = list(batches)
        masks, overrides, extra = masks or {}, overrides if overrides is not None else {}, {}
        lanes: dict[int, _Lane] = {id(trace): _Lane(trace.gm, masks, overrides, extra)}
        self.lane_of: list[_Lane] = []
        self.envs: list[dict] = []
        self.valid: list[torch.Tensor | None] = []  # per batch: which (item, position) are real tokens
        for k, batch in enumerate(batches):
            tr = trace_for(batch) if trace_for is not None else trace
            if id(tr) not in lanes:
                lanes[id(tr)] = _Lane(tr.gm, masks, overrides, extra)
            lane = lanes[id(tr)]
            args, kwargs = batch
            try:
                flat = fx_flatten_spec((tuple(args), dict(kwargs)), tr.in_spec)
            except Exception as exc:  # pytree raises several types on a structure mismatch
                raise PlanError(f"calibration batch {k} does not have the structure of the example inputs "
                                f"({tr.in_spec}): {exc}") from exc
            self.lane_of.append(lane)
            self.envs.append(dict(zip([n for n in lane.nodes if n.op == "placeholder"], flat)))
            mask = dict(kwargs).get("attention_mask")
            self.valid.append(mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None)
        self.main = lanes[id(trace)]
        self.nodes = self.main.nodes  # names and positions are every lane's
        self.index = {n.name: i for i, n in enumerate(self.nodes)}
        self.pos = [0] * len(self.envs)

    @property
    def runner(self) -> _Runner:
        return self.main.runner

    def fork(self, masks: dict, overrides: dict[str, torch.Tensor]) -> "Walk":
        """A walk that continues from here with other masks and weights (values computed so
        far are shared: the interpreter never changes a tensor in place)."""
        new = copy.copy(self)
        extra: dict = {}
        forked = {id(lane): lane.fork(masks, overrides, extra) for lane in {id(x): x for x in self.lane_of}.values()}
        forked.setdefault(id(self.main), self.main.fork(masks, overrides, extra))
        new.lane_of = [forked[id(lane)] for lane in self.lane_of]
        new.main = forked[id(self.main)]
        new.envs = [dict(e) for e in self.envs]
        new.pos = list(self.pos)
        return new

    def first_reader(self, targets: Iterable[str]) -> int:
        """The index of the first node that reads one of the weights ``targets``."""
        targets = set(targets)
        for i, n in enumerate(self.nodes):
            if any(a.op == "get_attr" and a.target in targets for a in n.all_input_nodes):
                return i
        return len(self.nodes)

    def producer(self, value: str) -> int | None:
        """The node that computes IR value ``value`` ("split.1", "wrapper/inner" included)."""
        i = self.index.get(value.split("/")[0])
        if i is None:
            base, _, item = value.split("/")[0].rpartition(".")
            i = self.index.get(base) if item.isdigit() else None
        return i

    @property
    def overrides(self) -> dict[str, torch.Tensor]:
        return self.runner.overrides

    def node_index(self, name: str) -> int | None:
        return self.index.get(name)

    def value(self, batch: int, name: str) -> Any:
        """An IR value of a batch ('split.1' is item 1 of node 'split')."""
        env, nodes = self.envs[batch], self.lane_of[batch].nodes
        node = self.index.get(name)
        if node is not None:
            return env[nodes[node]]
        base, _, item = name.rpartition(".")
        return env[nodes[self.index[base]]][int(item)]

    def node_value(self, batch: int, i: int) -> Any:
        """The output of node ``i`` for a batch advanced past it."""
        return self.envs[batch][self.lane_of[batch].nodes[i]]

    def advance(self, stop: int, before: Callable[[int, dict], None] | None = None,
                batch: int | None = None, after: Callable[[int, dict], None] | None = None) -> None:
        """Run every batch (or only ``batch``) up to node ``stop`` (exclusive); ``before(i, env)``
        is called before node i runs, with node i's inputs alive, ``after(i, env)`` once its
        output exists."""
        for k in range(len(self.envs)) if batch is None else (batch,):
            env, lane = self.envs[k], self.lane_of[k]
            runner, nodes = lane.runner, lane.nodes
            runner.env = env
            for i in range(self.pos[k], stop):
                n = nodes[i]
                if before is not None:
                    before(i, env)
                if n.op == "placeholder" and after is not None:
                    after(i, env)
                if n.op in ("placeholder", "output", "get_attr"):
                    continue
                for a in n.all_input_nodes:  # weights are read when used: a refit may have replaced them
                    if a.op == "get_attr":
                        env[a] = runner.get_attr(a.target, (), {})
                with torch.no_grad():
                    env[n] = runner.run_node(n)
                if after is not None:
                    after(i, env)
                for dead in lane.dies_at.get(i, ()):
                    env.pop(dead, None)
            self.pos[k] = max(self.pos[k], stop)

    def outputs(self, batch: int) -> Any:
        """The model's (flat) outputs for a batch advanced to the end."""
        self.advance(len(self.nodes), batch=batch)
        out = self.lane_of[batch].nodes[-1]
        env = self.envs[batch]
        return torch.fx.node.map_arg(out.args[0], lambda n: env[n])


def as_batch(batch: Any) -> tuple[tuple, dict]:
    """A calibration batch as (args, kwargs): a dict is keyword inputs, a tuple or list
    positional inputs, a single tensor one positional input."""
    if isinstance(batch, dict):
        return (), dict(batch)
    if isinstance(batch, (tuple, list)):
        return tuple(batch), {}
    if isinstance(batch, torch.Tensor):
        return (batch,), {}
    raise PlanError(f"a calibration batch must be a tuple of positional inputs or a dict of keyword inputs, "
                    f"not {type(batch).__name__}")


def positional(model: torch.nn.Module, example_args: tuple, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """A dict batch for an example given partly by position (vocos' ``(x,)`` and ``{"bandwidth_id": ...}``): the
    entries named as forward's first positional parameters become positional inputs, as the example has them."""
    if not example_args or args or not kwargs:
        return args, kwargs
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return args, kwargs
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:len(example_args)]
    if len(names) < len(example_args) or not all(n in kwargs for n in names):
        return args, kwargs
    return tuple(kwargs[n] for n in names), {k: v for k, v in kwargs.items() if k not in names}


def take_items(batch: tuple[tuple, dict], n: int, items) -> tuple[tuple, dict]:
    """(args, kwargs) with every tensor whose leading axis has the batch's ``n`` items cut to
    ``items`` (a boolean mask); other inputs as they are."""
    idx = torch.as_tensor(items).nonzero().flatten()

    def cut(t: Any) -> Any:
        return t.index_select(0, idx) if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == n else t

    args, kwargs = batch
    return tuple(tree_map(cut, a) for a in args), {k: tree_map(cut, v) for k, v in kwargs.items()}


def same_graph(main, other, where: str, shapes: list) -> Any:
    """``other`` (a trace at other input shapes) if it is ``main`` op for op, else a PlanError."""
    ops = [(n.op, n.name, str(n.target)) for n in main.nodes()]
    new = [(n.op, n.name, str(n.target)) for n in other.nodes()]
    if ops == new:
        return other
    fixed = aligned(main, other)  # only .contiguous() calls differ (a split of a batch of one is contiguous)
    if fixed is not None:
        return fixed
    at = next((i for i, (a, b) in enumerate(zip(ops, new)) if a != b), min(len(ops), len(new)))
    first = (f"node {ops[at][1]} ({ops[at][2]}) becomes {new[at][1]} ({new[at][2]})" if at < min(len(ops), len(new))
             else f"{len(ops)} nodes become {len(new)}")
    raise PlanError(f"{where} has input shapes {shapes}, at which the forward runs other ops than at the example "
                    f"inputs' shapes {main.input_shapes()} ({first}): give calibration batches the example "
                    "inputs' shapes, or trace with a calibration batch as the example inputs")


def retrace(model, main, batch: tuple, where: str, shapes: list) -> Any:
    """The trace of ``model`` at ``batch``'s input shapes (``shapes``), checked op for op against
    ``main`` (:func:`same_graph`); where the model cannot run them, a TraceError that names the batch,
    its shapes against the example's and, from which dims differ, the likely fix."""
    args, kwargs = batch
    try:
        traced = trace_model(model, tuple(args), dict(kwargs), like=main)
    except TraceError as exc:  # the model's own error, at shapes only this batch has
        example = main.input_shapes()
        only_batch = len(shapes) == len(example) and all(
            len(a) == len(b) and a[1:] == b[1:] for a, b in zip(shapes, example))
        fix = ("the forward fixes its batch size: give batches of the example's batch size" if only_batch else
               "give batches shaped like the example inputs (a batch of any size, the same dims after it)")
        raise TraceError(f"{where} has input shapes {shapes} where the example has {example}, and the model cannot "
                         f"run them: {exc}. {fix[0].upper() + fix[1:]}") from exc
    return same_graph(main, traced, where, shapes)


def structure_difference(example, batch, path: tuple = ()) -> str:
    """Where ``batch`` (args, kwargs) is not shaped like ``example`` (dict keys one has and the other lacks, sequence
    lengths), in words; '' where no such difference is found."""
    def named() -> str:
        if len(path) < 2:
            return ("the inputs", "the positional inputs", "the keyword inputs")[path[0] + 1 if path else 0]
        return ("positional input " if path[0] == 0 else "keyword input ") + repr(path[1]) + "".join(f"[{k!r}]"
                                                                                                 for k in path[2:])

    example, batch = _as_dict(example), _as_dict(batch)  # a TensorDict (torchrl's inputs) by its keys
    if isinstance(example, dict) and isinstance(batch, dict):
        lacks, extra = [k for k in example if k not in batch], [k for k in batch if k not in example]
        if lacks or extra:
            top = path == (1,)  # the keyword inputs themselves, not a dict given as one input
            said = [f"lack{'' if top else 's'} {lacks}, which the example{'' if top else chr(39) + 's'} has" if lacks else "",
                    f"ha{'ve' if top else 's'} {extra}, which the example{'' if top else chr(39) + 's'} has not" if extra else ""]
            hint = ("; a forward that writes its outputs into its input dict (sentence-transformers', torchrl's "
                    "TensorDict modules) added them to the example when it ran: pass a fresh copy of the example"
                    if lacks and not extra and not top else "")
            return named() + ("" if top else " (a dict)") + " " + " and ".join(x for x in said if x) + hint
        return next((d for k in example if (d := structure_difference(example[k], batch[k], path + (k,)))), "")
    if isinstance(example, (list, tuple)) and isinstance(batch, (list, tuple)):
        if len(example) != len(batch) and path:
            return f"{named()}: {len(batch)} item(s), where the example has {len(example)}"
        return next((d for i, (a, b) in enumerate(zip(example, batch)) if (d := structure_difference(a, b, path + (i,)))),
                    "")
    return ""


def _as_dict(x):
    """A mapping that is no dict (a TensorDict) as a dict of its entries; anything else as it is."""
    if isinstance(x, dict) or isinstance(x, torch.Tensor) or not (hasattr(x, "keys") and hasattr(x, "items")):
        return x
    return dict(x.items())
