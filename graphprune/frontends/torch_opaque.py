"""Modules whose forward reads tensor data (DBRX's per-expert ``nonzero()`` loop, a detector's NMS, a neighbour
list), recorded as one call each. No static graph replays what such a module runs, but the rest of the model can be
pruned around it: the call's inputs, outputs and weights keep their channels (rules/control.py), and the
interpreter calls the module's forward itself, so masked runs and the oracle compute what the model computes.

What crosses the call is held to its boundary: every tensor argument (inside dicts and lists too) and the module's
own weights (a weight tied to a layer outside is frozen with it) are the node's inputs; a module that reads another
recorded tensor (one stashed on an attribute) or hands one out other than by returning it is refused, and its parent
is tried instead. Its output's structure and non-tensor values are kept: a replay whose output differs in them (a
list as long as the experts a batch routes to) raises instead of computing something else. A read in the model's
own forward leaves nothing to prune around: that stays refused.
"""
from __future__ import annotations

import contextlib
import operator
import weakref
from typing import Any, Iterator

import torch

from ..errors import TraceError
from ..util.torch_compat import tree_flatten, tree_leaves, tree_unflatten
from .module_stack import user_frame

NAME = "opaque_call"  # lowered as op "python.opaque_call" (frontends/torch_export.py op_id)
NOTE = "graphprune_note"  # an FX node's meta key: why its module is recorded as one call (IR NodeMeta.note)
MAX_ROUNDS = 16  # recordings tried, each making at least one more kind of module whole


class Unrecordable(Exception):
    """The forward cannot be recorded as a static graph (the caller falls back to export). ``module``: the path of
    the module to record whole instead ('' where there is none: the read is in the model's own forward)."""

    def __init__(self, message: str, module: str = "") -> None:
        super().__init__(message)
        self.module = module


_CALLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> {call's structure: callable}


def opaque_call(module: torch.nn.Module, path: str, in_spec, n_args: int, out_spec, others: list):
    """The graph's callable for one call of ``module``: its first ``n_args`` arguments rebuilt by ``in_spec`` (the
    module's weights follow, as inputs the rules freeze), its forward run, its tensors returned flat. The same
    callable for the same module and structure, so that traces at other input shapes match node for node."""
    key = (str(in_spec), n_args, str(out_spec), repr(others))
    calls = _CALLS.setdefault(module, {})
    if key in calls:
        return calls[key]
    ref, kind = weakref.ref(module), type(module).__name__  # the cache must not keep its module alive

    def call(*flat: Any) -> tuple:
        args, kwargs = tree_unflatten(list(flat[:n_args]), in_spec)
        leaves, spec = tree_flatten(ref().forward(*args, **kwargs))  # forward: its hooks are recorded around the call
        got = [x for x in leaves if not isinstance(x, torch.Tensor)]
        if str(spec) != key[2] or got != others:
            raise TraceError(f"module '{path}' ({kind}), recorded as one call because its forward reads tensor data, "
                             f"returned another structure or other values than when traced ({len(leaves)} leaves, "
                             f"{got[:4]} against {others[:4]}): what it returns depends on the data, which no traced "
                             "graph follows, so this model cannot be pruned as it is written")
        return tuple(x for x in leaves if isinstance(x, torch.Tensor))

    call.__name__ = call.__qualname__ = NAME
    calls[key] = call
    return call


_PLAIN = (int, float, bool, str, type(None), torch.dtype, torch.device)


@contextlib.contextmanager
def recorded_whole(model: torch.nn.Module, paths: tuple[str, ...], recorder, meta_like,
                   reads: dict[str, str] | None = None) -> Iterator[None]:
    """While recording, each module at ``paths`` runs unrecorded (``recorder.paused``) and is recorded as one node,
    noted with ``reads[path]``: the read that made it whole, for the reasons that name it."""
    missing = object()
    wrapped = []
    for path in paths:
        module = model.get_submodule(path)
        wrapped.append((module, vars(module).get("forward", missing)))  # accelerate's hooks, a user's patch
        module.forward = _recording_forward(module, path, recorder, meta_like, (reads or {}).get(path, ""))
    try:
        yield
    finally:
        for module, before in wrapped:
            if before is missing:
                vars(module).pop("forward", None)
            else:
                module.forward = before


def _recording_forward(module: torch.nn.Module, path: str, recorder, meta_like, note: str):
    original = module.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        if recorder.quiet:  # inside another module recorded whole
            return original(*args, **kwargs)
        stack = recorder.modules.stack
        parent = stack[-2][1][0] if len(stack) > 1 and stack[-1][1][0] == path else ""
        leaves, in_spec = tree_flatten((args, kwargs))
        if not all(isinstance(x, (torch.Tensor, *_PLAIN)) for x in leaves):
            raise Unrecordable(f"module '{path}' ({type(module).__name__}) reads tensor data and takes arguments a "
                               "graph cannot hold", module=parent)
        weights = [*module.parameters(), *module.buffers()]
        inputs = [recorder.args_of(x) for x in leaves] + [recorder.args_of(w) for w in weights]
        with recorder.paused(path, parent, [x for x in leaves if isinstance(x, torch.Tensor)] + weights):
            out = original(*args, **kwargs)
            outs, out_spec = tree_flatten(out)
            vals = [meta_like(x) for x in outs if isinstance(x, torch.Tensor)]  # made unrecorded
        if any(any(isinstance(v, torch.Tensor) for v in getattr(x, "__dict__", {}).values()) for x in outs):
            raise Unrecordable(f"module '{path}' reads tensor data and returns an object holding tensors pytree does "
                               "not flatten", module=parent)
        tensors = [x for x in outs if isinstance(x, torch.Tensor)]
        graph = recorder.graph
        call = opaque_call(module, path, in_spec, len(leaves), out_spec, [x for x in outs if not isinstance(x, torch.Tensor)])
        node = graph.create_node("call_function", call, tuple(inputs), {}, name=NAME)
        node.meta["nn_module_stack"] = recorder.modules.current
        if note:
            node.meta[NOTE] = note
        where = user_frame(torch_layers=False)  # the model's line, not torch's call machinery
        if where is not None:
            node.meta["stack_trace"] = where
        node.meta["val"] = vals
        for i, t in enumerate(tensors):
            item = graph.create_node("call_function", operator.getitem, (node, i))
            item.meta["val"] = node.meta["val"][i]
            recorder.env[t] = item
        return out

    return forward


class Whole:
    """The module recorded whole that is running: what it may read of the recorded tensors, and whom to blame."""

    def __init__(self, path: str, parent: str, allowed: list[torch.Tensor]) -> None:
        self.path, self.parent, self.allowed = path, parent, {id(t) for t in allowed}


def quiet_run(recorder, func, args: tuple, kwargs: dict, run) -> Any:
    """One op of a module recorded whole: run, not recorded. A recorded tensor it reads must be one of the call's
    inputs; what it makes is remembered, so that one handed out other than by returning it is caught
    (:func:`handed_out`)."""
    whole = recorder.whole
    for t in tree_leaves((args, kwargs)):
        if isinstance(t, torch.Tensor) and id(t) not in whole.allowed and recorder.env.get(t) is not None:
            raise Unrecordable(f"module '{whole.path}' reads tensor data, and a tensor the model computed that is no "
                               "argument of it (one stashed on an attribute): it cannot be recorded as one call",
                               module=whole.parent)
    out = run()
    for t in tree_leaves(out):
        if isinstance(t, torch.Tensor):
            recorder.inside[id(t)] = (weakref.ref(t), whole)
    return out


def handed_out(recorder, t: torch.Tensor) -> None:
    """Refuse ``t`` where a module recorded whole made it and the model reads it other than from the call's outputs
    (stored on the module, a list it was given): a replay would read the example's values."""
    made = recorder.inside.get(id(t))
    if made is not None and made[0]() is t:
        raise Unrecordable(f"module '{made[1].path}' reads tensor data, and hands out a tensor other than by returning "
                           "it (stored on an attribute): it cannot be recorded as one call", module=made[1].parent)
