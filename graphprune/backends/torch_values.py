"""Numbers the pruned forward computes from its sizes: a rewrite the shapes prove can still compute other values.

A forward may turn a size into a value: ``x @ (w / w.shape[0] ** 0.5)`` (e3nn's fan-in scale), ``q * q.shape[-1]
** -0.5`` (an attention temperature). The trace holds the number it computed (``8.0``, ``0.25``); the pruned forward
computes it from the pruned size, so the pruned model is not the original with the removed channels zeroed, and
its shapes, which the rewrite's proof checks, are all right. Traced again after the rewrite, such a node's argument
has moved. The pruned groups that explain the move are named, so a default call keeps them whole and plans again
(planning/unreached.py): first those whose original and kept sizes give the two numbers (n ** p, k ** p), then those
whose kept share does (a group of another size cut alike), nearest the node first. A number no pruned size explains
(a random draw in the forward) is left alone.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import RewriteError, TraceError
from ..frontends.torch_export import lower_trace
from ..frontends.torch_trace import trace_model
from ..graph import DependencyGraph
from ..planning.plan import PrunePlan
from .torch_proof import arg_at, by_call_site, check_shapes

_POWERS = (0.5, -0.5, 1.0, -1.0)  # a fan-in's square root, a temperature, a mean's 1/n, a size itself
_ARITHMETIC = frozenset(f"aten.{op}" for op in "mul div add sub rsub pow true_divide floor_divide remainder".split())


def moved_value(model, dg: DependencyGraph, plan: PrunePlan, args: tuple, kwargs: dict | None) -> RewriteError | None:
    """The first number the rewritten ``model`` computes otherwise than the traced forward, explained by a pruned
    size, as a RewriteError naming the groups that move it; None where there is none."""
    program = getattr(dg, "program", None)
    trace = program.trace() if hasattr(program, "trace") else None
    if trace is None or trace.method != "record":  # an exported trace costs seconds more; nothing seen moves there
        return None
    try:
        again = trace_model(model, args, kwargs, like=trace)
    except TraceError:  # the proof says where the pruned forward fails, naming the groups to keep whole
        check_shapes(model, dg, plan, args, kwargs)
        raise
    ir = lower_trace(again)
    new = by_call_site(ir.nodes)
    for site, node in by_call_site(dg.ir.nodes).items():
        other = new.get(site)
        if other is None:
            continue
        pairs = [(a, arg_at(other, path)) for path, a in _numbers(node, node.op in _ARITHMETIC)]
        pairs += [(float(a), float(b)) for x, y in zip(node.inputs, other.inputs)
                  for a, b in _constants(dg.ir.values.get(x), trace, ir.values.get(y), again)]
        for a, b in pairs:
            b = float(b) if type(b) in (int, float) else None
            if b is None or a == b or not (math.isfinite(a) and math.isfinite(b)) or math.isclose(a, b, rel_tol=1e-6):
                continue
            groups = _explaining(dg, plan, node.meta.module, a, b)
            if groups:
                return RewriteError(
                    f"the pruned forward computes {b:.6g} where the traced one computed {a:.6g} at {node.where()}: "
                    "a number it derives from a pruned size, so it is not the original with the removed channels "
                    "zeroed", groups=groups, site=node.where(),
                    detail=f"the forward computes a number from its size at {node.where()} ({a:.6g} -> {b:.6g})")
    return None


def _constants(v, trace, w, again) -> list[tuple[float, float]]:
    """The elements of two small constants the forward made (``torch.tensor(d_k)``), paired; [] for anything else."""
    if v is None or w is None or v.kind != "const" or w.kind != "const":
        return []
    a, b = trace.root.get(v.source), again.root.get(w.source)
    if not all(isinstance(t, torch.Tensor) and t.numel() <= 16 and t.is_floating_point() for t in (a, b)) or \
            a.shape != b.shape:
        return []
    return list(zip(a.flatten().tolist(), b.flatten().tolist()))


def _numbers(node, ints: bool):
    """(path, value) of every float argument, positional (one level into lists) or keyword, and of every int one where
    ``ints`` (arithmetic: ``x / d``; other ops' ints are sizes, which the plan carries)."""
    def number(v) -> bool:
        return isinstance(v, float) or (ints and type(v) is int)

    for i, a in enumerate(node.args):
        if number(a):
            yield (i,), float(a)
        elif isinstance(a, (list, tuple)):
            yield from (((i, j), float(x)) for j, x in enumerate(a) if number(x))
    yield from (((k,), float(v)) for k, v in node.kwargs.items() if number(v))


def _explaining(dg: DependencyGraph, plan: PrunePlan, module: str, a: float, b: float) -> list[int]:
    """The pruned groups whose original and kept sizes n, k give a and b as n ** p and k ** p (or a's inverse),
    else whose kept share k / n, to a power of :data:`_POWERS`, is b / a; each time those with a weight in
    ``module`` first. Empty where none does."""
    pruned = {g: int(np.asarray(m).sum()) for g, m in plan.masks().items() if np.asarray(m).any()}

    def sizes(g: int) -> tuple[int, int]:
        return dg.group(g).size, dg.group(g).size - pruned[g]

    def exact(g: int) -> bool:
        n, k = sizes(g)
        return k > 0 and any(math.isclose(a, n ** p, rel_tol=1e-6) and math.isclose(b, k ** p, rel_tol=1e-6)
                             for p in _POWERS)

    def share(g: int) -> bool:
        n, k = sizes(g)
        return a != 0 and k > 0 and any(math.isclose(b / a, (k / n) ** p, rel_tol=1e-4) for p in _POWERS)

    def near(groups: list[int]) -> list[int]:
        here = [g for g in groups if module and any(m.name.startswith(module + ".") for m in dg.group(g).members)]
        return here or groups

    for test in (exact, share):
        found = [g for g in pruned if test(g)]
        if found:
            return near(found)
    return []
