"""Numbers the pruned forward computes from its sizes: a rewrite the shapes prove can still compute other values.

A forward may turn a size into a value: ``x @ (w / w.shape[0] ** 0.5)`` (e3nn's fan-in scale), ``q * q.shape[-1]
** -0.5`` (an attention temperature). The trace holds the number it computed (``8.0``, ``0.25``); the pruned forward
computes it from the pruned size, so the pruned model is not the original with the removed channels zeroed, and
its shapes, which the rewrite's proof checks, are all right. Traced again after the rewrite, such a node's float
argument has moved. The pruned groups that explain the move (a kept/original ratio whose square root or inverse
it is, among those the node's module holds) are named, so a default call keeps them whole and plans again
(planning/unreached.py); the forward may compute what it likes, but not silently.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import RewriteError
from ..graph import DependencyGraph
from ..planning.plan import PrunePlan
from .torch_proof import arg_at, by_call_site, retrace

_POWERS = (0.5, -0.5, 1.0, -1.0)  # a fan-in's square root, a temperature, a mean's 1/n, a size itself
_ARITHMETIC = frozenset(f"aten.{op}" for op in "mul div add sub rsub pow true_divide floor_divide remainder".split())


def moved_value(model, dg: DependencyGraph, plan: PrunePlan, args: tuple, kwargs: dict | None) -> RewriteError | None:
    """The first float argument the rewritten ``model`` computes otherwise than the traced forward, as a
    RewriteError naming the groups that move it; None where every one is as traced."""
    program = getattr(dg, "program", None)
    trace = program.trace() if hasattr(program, "trace") else None
    if trace is None or trace.method != "record":  # an exported trace costs seconds more; nothing seen moves there
        return None
    new = by_call_site(retrace(model, dg, args, kwargs).nodes)
    for site, node in by_call_site(dg.ir.nodes).items():
        other = new.get(site)
        if other is None:
            continue
        for path, a in _numbers(node.args, node.op in _ARITHMETIC):
            b = arg_at(other, path)
            b = float(b) if type(b) in (int, float) else None
            if b is not None and not math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12):
                groups = _explaining(dg, plan, node.meta.module, a, b)
                return RewriteError(
                    f"the pruned forward computes {b:.6g} where the traced one computed {a:.6g} at {node.where()}: "
                    "a number it derives from a pruned size, so it is not the original with the removed channels "
                    "zeroed", groups=groups, site=node.where(),
                    detail=f"the forward computes a number from its size at {node.where()} ({a:.6g} -> {b:.6g})")
    return None


def _numbers(args, ints: bool, prefix: tuple = ()):
    """(path, value) of every float argument, and of every int one where ``ints`` (arithmetic: ``x / d``; other ops'
    ints are sizes, which the plan carries)."""
    for i, a in enumerate(args):
        if isinstance(a, float) or (ints and type(a) is int):
            yield prefix + (i,), float(a)
        elif isinstance(a, (list, tuple)) and not prefix:
            yield from _numbers(a, ints, (i,))


def _explaining(dg: DependencyGraph, plan: PrunePlan, module: str, a: float, b: float) -> list[int]:
    """The pruned groups with a weight in ``module`` (else anywhere) whose kept/original ratio, to one of
    :data:`_POWERS`, is b/a; where none is, every pruned group of the module."""
    pruned = {g: m for g, m in plan.masks().items() if np.asarray(m).any()}
    here = [g for g in pruned if any(not module or m.name.startswith(module + ".") for m in dg.group(g).members)]

    def fits(g: int) -> bool:
        size = dg.group(g).size
        kept = size - int(np.asarray(pruned[g]).sum())
        return a != 0 and kept > 0 and any(math.isclose(b / a, (kept / size) ** p, rel_tol=1e-4) for p in _POWERS)

    return [g for g in here if fits(g)] or [g for g in pruned if fits(g)] or here
