"""Modules whose forward reads tensor data (DBRX's per-expert ``nonzero()`` loop, a detector's NMS, a neighbour
list), recorded as one call each. No static graph replays what such a module runs, but the rest of the model can be
pruned around it: the call's inputs and outputs keep their channels (rules/control.py), its weights stay as they
are, and the interpreter calls the module itself, so masked runs and the oracle compute what the model computes.
A read in the model's own forward (no module around it) leaves nothing to prune around: that stays refused.
"""
from __future__ import annotations

import contextlib
import operator
import weakref
from typing import Any, Iterator

import torch

from ..util.torch_compat import tree_leaves

NAME = "opaque_call"  # lowered as op "python.opaque_call" (frontends/torch_export.py op_id)
MAX_MODULES = 8  # each recording finds at most one more such module


class Unrecordable(Exception):
    """The forward cannot be recorded as a static graph (the caller falls back to export). ``module``: the path of
    the innermost module whose forward read tensor data, where that stopped it ('' at the model's own forward)."""

    def __init__(self, message: str, module: str = "") -> None:
        super().__init__(message)
        self.module = module


_CALLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> its callable, the same in every trace


def opaque_call(module: torch.nn.Module):
    """The graph's callable for ``module``: the module's tensors out, flattened in order. One per module, so that
    traces at other input shapes (calibration batches) match the example's node for node."""
    if module in _CALLS:
        return _CALLS[module]

    ref = weakref.ref(module)  # the callable is kept per module: it must not keep its module alive

    def call(*args: Any, **kwargs: Any) -> tuple:
        return tuple(t for t in tree_leaves(ref()(*args, **kwargs)) if isinstance(t, torch.Tensor))

    call.__name__ = call.__qualname__ = NAME
    call.module_type = type(module).__qualname__  # type: ignore[attr-defined]
    _CALLS[module] = call
    return call


_PLAIN = (torch.Tensor, int, float, bool, str, type(None), torch.dtype, torch.device)


def _plain(a: Any) -> bool:
    """Arguments a graph node can hold (what fx writes as code): tensors, numbers, strings and containers of them."""
    if isinstance(a, (list, tuple)):
        return all(_plain(x) for x in a)
    if isinstance(a, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in a.items())
    return isinstance(a, _PLAIN)


@contextlib.contextmanager
def recorded_whole(model: torch.nn.Module, paths: tuple[str, ...], recorder, meta_like, frame) -> Iterator[None]:
    """While recording, each module at ``paths`` runs unrecorded (``recorder.paused``) and is recorded as one node
    (``frame()``: the line of the model's code that called it, as the recorder names its nodes' lines)."""
    wrapped = []
    for path in paths:
        module = model.get_submodule(path)
        wrapped.append(module)
        module.forward = _recording_forward(module, path, recorder, meta_like, frame)
    try:
        yield
    finally:
        for module in wrapped:
            vars(module).pop("forward", None)


def _recording_forward(module: torch.nn.Module, path: str, recorder, meta_like, frame):
    original, call = module.forward, opaque_call(module)

    def forward(*args: Any, **kwargs: Any) -> Any:
        if not _plain((args, kwargs)):
            raise Unrecordable(f"module '{path}' reads tensor data and takes arguments a graph cannot hold "
                               f"({type(module).__name__}): it cannot be recorded as one call either")
        mapped = (recorder.args_of(args), recorder.args_of(kwargs))  # before the module may write its inputs
        with recorder.paused():
            out = original(*args, **kwargs)
        leaves = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        graph = recorder.graph
        node = graph.create_node("call_function", call, mapped[0], mapped[1], name=NAME)
        node.meta["nn_module_stack"] = recorder.modules.current
        where = frame()
        if where is not None:
            node.meta["stack_trace"] = where
        node.meta["val"] = [meta_like(t) for t in leaves]
        for i, t in enumerate(leaves):
            item = graph.create_node("call_function", operator.getitem, (node, i))
            item.meta["val"] = node.meta["val"][i]
            recorder.env[t] = item
        return out

    return forward
