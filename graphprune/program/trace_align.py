"""A re-trace at other input shapes aligned op for op with the example's trace, where the two
differ only by ``.contiguous()`` calls.

``x.contiguous()`` dispatches an op only where ``x`` is not contiguous already, and that can
depend on the batch size: a channel split of a batch of one is contiguous, of a batch of four it
is not (IBN-Net's ``inorm(a.contiguous())``). The op changes no value, so the two traces compute
the same thing; the calibration walk needs them node for node (statistics and masks are keyed by
node name and position: graphprune.program.torch_run.Walk). The re-trace is rebuilt with the
example's names: a ``contiguous`` only it has is dropped (its readers read its input, and a ``view``
among them becomes a ``reshape``, which copies where a view cannot), one only the example has is added
(a no-op on a contiguous tensor). Copies are matched by what they copy, not by their order.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..frontends.torch_export import op_id

_COPY = "aten.contiguous"
_VIEW = "aten.view"


def _key(n: torch.fx.Node) -> tuple[str, str]:
    return n.op, str(n.target)


def _is_copy(n: torch.fx.Node) -> bool:
    return n.op == "call_function" and op_id(n.target) == _COPY and bool(n.args)


def _merge(a: Any, b: Any, of_main: dict, of_other: dict) -> Any:
    """``b``'s arguments with every node taken where ``a`` (the example's) reads: a ``contiguous`` only the
    example has is read where the example reads it; sizes and numbers are ``b``'s own (another batch size)."""
    if isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node):
        return of_main[a]
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
        return type(b)(_merge(x, y, of_main, of_other) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return {k: _merge(a[k], b[k], of_main, of_other) for k in b}
    return torch.fx.node.map_arg(b, of_other.get)


def aligned(main: Any, other: Any) -> Any | None:
    """``other`` rebuilt to match ``main`` node for node and name for name, or None where they differ
    by more than ``contiguous`` calls (or either is not a recording)."""
    if main.graph is None or other.graph is None:
        return None
    ours, theirs = list(main.graph.nodes), list(other.graph.nodes)
    graph = torch.fx.Graph()
    of_main: dict[torch.fx.Node, torch.fx.Node] = {}  # main's node -> the new one
    of_other: dict[torch.fx.Node, torch.fx.Node] = {}  # other's node -> the new one
    names: dict[str, str] = {}  # other's name -> main's
    dropped: set[torch.fx.Node] = set()
    i = j = 0
    while i < len(ours) or j < len(theirs):
        a = ours[i] if i < len(ours) else None
        b = theirs[j] if j < len(theirs) else None
        if a is not None and b is not None and _key(a) == _key(b) and (
                not _is_copy(a) or of_other.get(b.args[0]) is of_main.get(a.args[0])):  # copies of one tensor
            args, kwargs = _merge(a.args, b.args, of_main, of_other), _merge(a.kwargs, b.kwargs, of_main, of_other)
            # a view of what only the re-trace copied: the tensor is not contiguous there, and reshape copies it
            target = torch.ops.aten.reshape.default if op_id(b.target) == _VIEW and dropped.intersection(
                b.all_input_nodes) else b.target
            new = graph.create_node(b.op, target, args, kwargs, name=a.name) if b.op != "output" \
                else graph.output(args[0])
            new.meta = dict(b.meta)
            of_main[a], of_other[b], names[b.name] = new, new, a.name
            i, j = i + 1, j + 1
        elif b is not None and _is_copy(b) and isinstance(b.args[0], torch.fx.Node) and not (
                a is not None and _is_copy(a) and a.args[0] in of_main):  # two copies of different tensors: a's first
            of_other[b] = of_other[b.args[0]]  # dropped: its readers read what it copied
            dropped.add(b)
            j += 1
        elif a is not None and _is_copy(a) and isinstance(a.args[0], torch.fx.Node) and a.args[0] in of_main:
            src = of_main[a.args[0]]
            new = graph.create_node("call_function", a.target, (src, *a.args[1:]), dict(a.kwargs), name=a.name)
            new.meta = dict(a.meta)
            if "val" in src.meta:
                new.meta["val"] = src.meta["val"]  # the same shape as its input, at other's shapes
            of_main[a] = new
            i += 1
        else:
            return None
    graph.lint()
    return dataclasses.replace(
        other, graph=graph, _gm=None, user_inputs=[names.get(n, n) for n in other.user_inputs],
        kinds={names.get(k, k): v for k, v in other.kinds.items()})
