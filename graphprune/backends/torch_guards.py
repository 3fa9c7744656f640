"""Module attributes a forward checks its inputs against, found from where the pruned forward fails.

Some forwards never spell a size as an op argument but compare the input with an attribute
(diffusers' ``Upsample2D``: ``assert hidden_states.shape[1] == self.channels``). No traced
constant records it, so torch_proof's candidates miss it and the pruned forward fails inside
that module. :func:`failing_module` reads which module failed (the traceback's innermost
frame whose ``self`` is one of the model's modules); :func:`guard_updates` proposes, for every
module of that class, the int attributes equal to a size the plan changes where data enters
or leaves the module, at the one new size the plan gives it. rewrite() tries them against the
same shape proof, and keeps them only if no scalar the forward computes changes with them.
"""
from __future__ import annotations

import functools
import inspect
import linecache
import os
import re
from typing import Any

import torch
from torch import nn

from ..graph import DependencyGraph
from ..planning.plan import PrunePlan, keep_masks
from .torch_proof import KNOWN_LAYERS, arg_at, by_call_site, groups_spelled_at

# frames of torch and of graphprune are not where a user's forward failed
_LIBRARY = (os.path.dirname(torch.__file__) + os.sep, os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep)


def root_cause(exc: BaseException) -> BaseException:
    """The first exception of a chain of re-raises (the forward's own)."""
    seen = set()
    while (exc.__cause__ or exc.__context__) is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return exc


def failing_module(model: nn.Module, exc: BaseException) -> tuple[str | None, str, tuple[str, int] | None]:
    """(path of the innermost module of ``model`` whose own forward code raised, or None; where the
    forward raised, as "file:line (`source`)" for messages; that (file, line), or None)."""
    root = root_cause(exc)
    paths = {id(m): p for p, m in model.named_modules()}
    path, where, loc = None, "", None
    tb = root.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        me = frame.f_locals.get("self")
        if isinstance(me, nn.Module) and id(me) in paths and not isinstance(me, KNOWN_LAYERS):
            path = paths[id(me)]
        file = frame.f_code.co_filename
        if not file.startswith(_LIBRARY):
            line = linecache.getline(file, tb.tb_lineno).strip()
            where, loc = f"{file}:{tb.tb_lineno}" + (f" (`{line}`)" if line else ""), (file, tb.tb_lineno)
        tb = tb.tb_next
    return path, where, loc


def unreached_groups(dg: DependencyGraph, plan: PrunePlan, loc: tuple[str, int] | None) -> tuple[list[int], str]:
    """The pruned groups whose sizes the nodes traced from source line ``loc`` spell as constants the
    plan changes (PixArt views the caption projection at ``hidden_states.shape[-1]``, a number the trace
    records and the rewrite cannot carry), and the first such node; ([], "") where none does."""
    if loc is None:
        return [], ""
    spot = f'File "{loc[0]}", line {loc[1]},'
    at = [n for n in dg.ir.nodes if (n.meta.source or "").startswith(spot)]
    groups, site = groups_spelled_at(dg, plan, at)
    read = read_from_input(dg, plan, at)
    return sorted(set(groups) | read), site or (at[0].where() if read else "")


def read_from_input(dg: DependencyGraph, plan: PrunePlan, at: list) -> set[int]:
    """Where a forward reads a size from its input (``b, n, d = x.shape; o.reshape(b, n, d)``), the trace
    holds the input's width as a literal that no plan changes, and the pruned forward is given the input's
    pruned width instead. The groups that then must stay whole: the pruned ones of a dim the nodes ``at`` could
    have read a shape from (:func:`readable_changed`) whose old size one of their constants spells, and every
    prunable one of that constant's slot (heads and head channels alike), which must stay that width. Empty
    where none."""
    names, pruned = {n.name for n in at}, plan.masks()
    carried = [c for c in dg.carries if c.node in names]
    masks = keep_masks(dg, plan)
    bounds = Boundaries(dg, masks)
    hits = {h for n in at for h in readable_changed(dg, masks, n, {c.value for c in carried if c.node == n.name}, bounds)}
    out = {a for key in hits for a in dg.solver.slot_atoms(key)[1] if a in pruned and pruned[a].any()}
    if out:
        open_ = {g.id for g in dg.groups if g.prunable}
        sizes = {dg.ir.values[v].shape[d] for v, d in hits}
        out |= {a for c in carried if c.value in sizes for a in dg.solver.slot_atoms(c.key)[1] if a in open_}
    return out


def readable_changed(dg: DependencyGraph, masks: dict, node, sizes: set[int],
                     bounds: "Boundaries | None" = None) -> list[tuple[str, int]]:
    """The (value, dim) slots the plan (``masks``) changes whose old size is in ``sizes``, over the values whose
    shape ``node``'s forward code could have read: those its module's nodes read or made before it (its input,
    or what a sublayer made; the model's own forward where it is in no module)."""
    bounds = bounds or Boundaries(dg, masks)
    values: set[str] = set(node.inputs)
    for n in bounds.nodes.get(node.meta.module or "", []):
        if bounds.order[n.name] >= bounds.order[node.name]:
            break
        values.update(n.inputs)
        values.update(n.outputs)
    out = []
    for v in sorted(values):
        value = dg.ir.values[v]
        if value.kind in ("input", "act"):
            out += [(v, d) for d, size in enumerate(value.shape) if size in sizes and (v, d) in masks]
    return out


class Boundaries:
    """Where data enters and leaves each module's nodes, indexed once per rewrite (a UNet has hundreds of
    blocks: scanning every node per module cost modules x nodes)."""

    def __init__(self, dg: DependencyGraph, masks: dict):
        self.dg, self.masks = dg, masks
        self.nodes: dict[str, list] = {"": list(dg.ir.nodes)}  # the root runs every node
        self.order = {n.name: i for i, n in enumerate(dg.ir.nodes)}
        self.users: dict[str, set[str]] = {}
        for n in dg.ir.nodes:
            for p in set(n.meta.modules) | ({n.meta.module} if n.meta.module else set()):
                self.nodes.setdefault(p, []).append(n)
            for i in n.inputs:
                self.users.setdefault(i, set()).add(n.name)

    def sizes(self, path: str) -> tuple[dict[int, set[int]], dict[int, set[int]]]:
        """old size -> new sizes (the old one where the plan leaves a dim) over the dims of the values
        entering and of those leaving the nodes run by module ``path`` (its submodules included)."""
        inside = self.nodes.get(path, [])
        names = {n.name for n in inside}
        made = {o for n in inside for o in n.outputs}
        outputs = set(self.dg.ir.outputs)
        entering = {i for n in inside for i in n.inputs if i not in made}
        leaving = {o for o in made if o in outputs or self.users.get(o, set()) - names}
        return _sizes(self.dg, self.masks, entering), _sizes(self.dg, self.masks, leaving)


def _sizes(dg: DependencyGraph, masks: dict, values: set[str]) -> dict[int, set[int]]:
    """old size -> new sizes over every dim of ``values`` (a dim the plan leaves maps to itself: a module
    handed an unchanged 128 and returning 104 keeps ``channels = 128``)."""
    out: dict[int, set[int]] = {}
    for v in sorted(values):
        if dg.ir.values[v].kind not in ("input", "act"):
            continue  # a weight's dims are the layer's sizes, not what its forward is handed
        for d, size in enumerate(dg.ir.values[v].shape):
            if isinstance(size, int):
                out.setdefault(size, set()).add(int(masks[(v, d)].sum()) if (v, d) in masks else size)
    return out


def guard_updates(model: nn.Module, dg: DependencyGraph, plan: PrunePlan, failed: str):
    """Updates for every module of ``failed``'s class: each int attribute equal to a size the plan
    changes where data enters or leaves that module, at the new size the plan gives it there.
    Returns (sure, unsure): (path, attribute, value) updates, and per attribute the options when
    entering and leaving data give it different sizes (``channels`` and ``out_channels`` both 64,
    cut to different widths), each option for every module of the class alike (identical layers
    decide together, as torch_proof's probes do)."""
    cls = type(model.get_submodule(failed) if failed else model)
    bounds = Boundaries(dg, keep_masks(dg, plan))
    sure: list[tuple[str, str, Any]] = []
    sides: dict[str, tuple[list, list]] = {}
    for path, m in model.named_modules():
        if type(m) is not cls:
            continue
        entering, leaving = bounds.sizes(path)
        for attr, val in sorted(vars(m).items()):
            if attr.startswith("_") or type(val) is not int:
                continue
            ins, outs = (_one(side.get(val, set())) for side in (entering, leaving))
            if ins is not None and outs is not None and ins != outs:
                opts = sides.setdefault(attr, ([], []))
                opts[0].append((path, attr, ins))
                opts[1].append((path, attr, outs))
            elif (ins if ins is not None else outs) not in (None, val):
                sure.append((path, attr, ins if ins is not None else outs))
    # the likelier side first (the first combination that passes the proof is kept): out_channels is the
    # width that leaves, channels the one that enters, as diffusers' Downsample2D names them
    return sure, [list(opts)[::-1] if "out" in attr.lower() else list(opts) for attr, opts in sorted(sides.items())]


def _one(values: set[int]) -> int | None:
    return next(iter(values)) if len(values) == 1 else None


def reads_guard(model: nn.Module, dg: DependencyGraph, plan: PrunePlan) -> bool:
    """Whether a module outside torch's layers reads (``self.name`` anywhere in its class's code) an int
    attribute equal to a size the plan changes where data enters or leaves it: the rewrite must then be
    proved by tracing again, where a failure names the module."""
    bounds = None
    for path, m in model.named_modules():
        if isinstance(m, KNOWN_LAYERS):
            continue
        read = _reads(type(m))
        ints = [v for a, v in vars(m).items() if a in read and type(v) is int]
        if not ints:
            continue
        bounds = Boundaries(dg, keep_masks(dg, plan)) if bounds is None else bounds
        entering, leaving = bounds.sizes(path)
        if any(side.get(v, {v}) != {v} for side in (entering, leaving) for v in ints):
            return True
    return False


@functools.lru_cache(maxsize=None)
def _reads(cls: type) -> frozenset[str]:
    """Attribute names the class's own code (every class of its MRO outside torch) reads off ``self``
    (or by ``getattr(self, "name")``): a helper method's check counts as the forward's."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is object or klass.__module__.startswith("torch."):
            continue
        try:
            src = inspect.getsource(klass)
        except (OSError, TypeError):  # no source (compiled or generated): nothing known to read
            continue
        names.update(re.findall(r"\bself\.(\w+)", src))
        names.update(re.findall(r"getattr\(\s*self\s*,\s*[\'\"](\w+)", src))
    return frozenset(names)


def same_scalars(dg: DependencyGraph, new_nodes, modules: set[str]) -> str | None:
    """None when every scalar argument (float or int) of every op run by ``modules`` (the guarded ones,
    their submodules included) is unchanged, matched by call site, but for the sizes the plan carries
    (view targets and the like); else the first that moved: an attribute also read as a number
    (``x / self.channels``, a 1/sqrt(channels) scale) is no guard."""
    carried = {(c.node, tuple(c.path)) for c in dg.carries}
    new_by_site = by_call_site(new_nodes)
    for site, node in by_call_site(dg.ir.nodes).items():
        other = new_by_site.get(site)
        if other is None or not any(not m or site[0] == m or site[0].startswith(m + ".") for m in modules):
            continue
        for path, a in _scalars(node.args):
            b = arg_at(other, path)
            if (node.name, path) not in carried and a != b:
                return f"{node.where()}: {a} -> {b}"
    return None


def _scalars(args, prefix: tuple = ()):
    """(path, value) of every int or float argument (bools are flags), one level into lists."""
    for i, a in enumerate(args):
        if isinstance(a, (int, float)) and not isinstance(a, bool):
            yield prefix + (i,), a
        elif isinstance(a, (list, tuple)) and not prefix:
            yield from _scalars(a, (i,))

