"""Remove residual branches from an nn.Module whose forward is the user's Python code.

The code cannot be edited, so the modules the branch runs are swapped: the module that
computes the branch's output becomes a :class:`ZeroBranch` (zeros of the output's shape,
computed from its input's shape at run time) and every other module that served only the
branch becomes a :class:`Skip` (returns its input). Which modules those are comes from the
trace's module stacks: a module all of whose ops die with the branch. Between the zero
module and the add only ops that keep zero at zero may run (a layer scale, a permute,
dropout), so the add then receives exact zeros: ``y = x``.

Each removal is checked on the example inputs against the same model with the branch's
module output zeroed by a hook (the masked original's semantics); a mismatch restores the
modules and raises.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..blocks import dead_values
from ..errors import RewriteError
from ..ops import Ops
from ..util.compare import gaps
from ..util.torch_compat import pop_tensor, tree_leaves


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.Tensor):
            return a
    return None


class Skip(nn.Module):
    """A removed module whose only reader was a removed branch: passes its input on."""

    def forward(self, *args, **kwargs):
        return _first_tensor(args, kwargs)


class ZeroBranch(nn.Module):
    """A removed branch's output module: zeros shaped like the original output. A dim that had
    the input's size takes the input's size at run time (batch, sequence, space); the others
    keep the traced size (the branch's channels)."""

    def __init__(self, spec: Any, in_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.spec, self.in_shape = spec, tuple(in_shape)

    def _zeros(self, spec: tuple, x: torch.Tensor) -> torch.Tensor:
        shape, dtype = spec
        if len(shape) == x.dim() == len(self.in_shape):
            shape = [x.shape[d] if s == self.in_shape[d] else s for d, s in enumerate(shape)]
        return torch.zeros(shape, dtype=dtype, device=x.device)

    def forward(self, *args, **kwargs):
        x = _first_tensor(args, kwargs)
        if isinstance(self.spec, list):
            return tuple(None if s is None else self._zeros(s, x) for s in self.spec)
        return self._zeros(self.spec, x)


def plan_modules(dg, blocks) -> tuple[dict[str, str], list[str], list[str]]:
    """(zero module path -> block id, skip module paths, parameters to make scalars) for removing
    ``blocks``."""
    ir = dg.ir
    dead = dead_values(ir, blocks)
    dead_nodes = {n.name for n in ir.nodes if n.outputs and (all(o in dead for o in n.outputs) or _no_op(ir, n))}
    calls: dict[str, list[str]] = {}
    for n in ir.nodes:
        for path in n.meta.modules:
            calls.setdefault(path, []).append(n.name)
    wholly = {m for m, names in calls.items() if m and all(x in dead_nodes for x in names)}
    maximal = {m for m in wholly if not any(p in wholly for p in _parents(m))}
    producer = ir.producers()
    zero: dict[str, str] = {}
    walked: set[str] = set()
    for b in blocks:
        # walk back from the branch value through ops that keep zeros zero; each op that does not
        # (a linear, a conv) must be the output of a module the branch alone uses: that module
        # returns zeros. An add of two dead values (parallel attention + MLP) is walked both ways.
        todo, seen = [b.branch], set()
        while todo:
            value = todo.pop()
            p = producer.get(value)
            if p is None or p.name in seen:
                continue
            seen.add(p.name)
            walked.add(p.name)
            ins = [r for r in p.inputs if r in dead and ir.values[r].kind == "act"]
            keeps = p.op in Ops.KeepsZero and ins and not (p.op in ("aten.div", "aten.div_") and ins[0] != p.inputs[0])
            if p.op in (Ops.Add | Ops.Sub) and len(ins) == len(p.inputs) == 2:
                todo.extend(ins)
            elif keeps:
                todo.append(ins[0])
            else:
                path = next((m for m in p.meta.modules if m in maximal), None)
                if path is None:
                    raise RewriteError(f"cannot remove {b}: part of it is computed by {p.where()}, outside any module "
                                       "that only the branch uses, so no module swap removes it; leave blocks out of "
                                       "targets for this model")
                zero[path] = b.id
    skip = sorted(m for m in maximal - set(zero) if not any(z.startswith(m + ".") for z in zero))
    # a dead weight a live module still reads (a layer scale multiplying the zeroed branch): any
    # scalar does there, so it stops being a parameter (stored and counted) at all
    consumers = ir.consumers()
    scalars = sorted({ir.values[r].source for n in ir.nodes if n.name in walked and n.op in Ops.Scale
                      for r in n.inputs if r in dead and ir.values[r].kind == "param" and
                      all(c.name in walked and c.op in Ops.Scale for c in consumers.get(r, []))})
    return zero, skip, [p for p in scalars if p and not any(p.startswith(m + ".") for m in list(zero) + skip)]


def _no_op(ir, n) -> bool:
    """A same-dtype ``.to()`` (or alias): the tracer may hand its output to the add as the skip
    (it is the same tensor object), yet a :class:`Skip` in its module returns that very input."""
    if n.op not in Ops.MayAlias or len(n.outputs) != 1:
        return False
    ins = [r for r in n.inputs]
    if len(ins) != 1:
        return False
    a, b = ir.values[ins[0]], ir.values[n.outputs[0]]
    return a.shape == b.shape and a.dtype == b.dtype


def _parents(path: str):
    parts = path.split(".")
    for k in range(1, len(parts)):
        yield ".".join(parts[:k])


def _spec(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return (tuple(out.shape), out.dtype)
    if isinstance(out, (tuple, list)) and all(o is None or isinstance(o, torch.Tensor) for o in out):
        return [None if o is None else (tuple(o.shape), o.dtype) for o in out]
    return None


def _zero_like(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return torch.zeros_like(out)
    return type(out)(None if o is None else torch.zeros_like(o) for o in out)


def remove_blocks(model: nn.Module, dg, blocks, args: tuple, kwargs: dict | None = None, atol: float = 1e-5) -> None:
    """Swap the modules of ``blocks`` in ``model`` (in place), checked on the example inputs."""
    if blocks:
        _swap(model, dg, blocks, args, kwargs or {}, atol)


def removal_problem(model: nn.Module, dg, blocks, args: tuple, kwargs: dict | None = None, atol: float = 1e-5) -> str:
    """Why swapping the modules of ``blocks`` does not remove them (a RewriteError's message), or '' where it does;
    ``model`` is left as it was either way. The planner asks before it chooses blocks."""
    try:
        old, scalars = _swap(model, dg, blocks, args, kwargs or {}, atol)
    except RewriteError as exc:
        return str(exc)
    _undo(model, old, scalars)
    return ""


def _swap(model: nn.Module, dg, blocks, args: tuple, kwargs: dict, atol: float) -> tuple[dict, list[str]]:
    """Swap, check against the masked original, undo and raise on a mismatch; (the swapped-out modules and
    tensors by path, the paths of parameters made scalars)."""
    zero, skip, scalars = plan_modules(dg, blocks)
    specs: dict[str, tuple] = {}

    def hook(path):
        def fn(module, a, kw, out):
            x = _first_tensor(a, kw)
            spec = _spec(out)
            if x is None or spec is None:
                raise RewriteError(f"cannot remove the branch through module '{path}' ({type(module).__name__}): it "
                                   "takes no tensor or returns something other than tensors; leave blocks out of "
                                   "targets for this model")
            specs[path] = (spec, tuple(x.shape))
            return _zero_like(out)  # the masked original: the branch contributes zeros
        return fn

    handles = [model.get_submodule(p).register_forward_hook(hook(p), with_kwargs=True) for p in zero]
    try:
        with torch.no_grad():
            want = _flat(model(*args, **kwargs))
    finally:
        for h in handles:
            h.remove()
    missing = sorted(set(zero) - set(specs))
    if missing:
        raise RewriteError(f"cannot remove the branch through module '{missing[0]}': the example inputs do not run it")
    old = {p: model.get_submodule(p) for p in list(zero) + skip}
    for p in zero:
        _replace(model, p, ZeroBranch(*specs[p]))
    for p in skip:
        _replace(model, p, Skip())
    for p in scalars:
        owner, _, attr = p.rpartition(".")
        mod = model.get_submodule(owner) if owner else model
        old[p] = pop_tensor(mod, attr)
        setattr(mod, attr, torch.ones((), dtype=old[p].dtype, device=old[p].device))
    try:
        with torch.no_grad():
            got = _flat(model(*args, **kwargs))
        # NaN and inf where the masked original has them too (a -inf masked logit) differ by nothing
        _, err = gaps([g.double().cpu().numpy() for g in got], [w.double().cpu().numpy() for w in want])
        if len(got) != len(want) or any(g.shape != w.shape for g, w in zip(got, want)) or not err <= atol:
            raise RewriteError(f"removing {len(blocks)} block(s) by module swaps does not give the masked original "
                               f"on the example inputs (difference {err:.3g}); the forward reads a swapped module "
                               "another way. Leave blocks out of targets for this model")
    except Exception as exc:  # noqa: BLE001 - whatever the swapped forward raises: the swaps are undone first
        _undo(model, old, scalars)
        if isinstance(exc, RewriteError):
            raise
        why = (str(exc).strip().splitlines() or [""])[0][:300]
        raise RewriteError(f"removing {len(blocks)} block(s) by module swaps leaves a forward that fails on the example "
                           f"inputs ({type(exc).__name__}: {why}): the forward reads a swapped module another way (its "
                           "output viewed at a fixed size). Leave blocks out of targets for this model") from exc
    return old, scalars


def _undo(model: nn.Module, old: dict, scalars: list[str]) -> None:
    for p, m in old.items():
        if p in scalars:
            owner, _, attr = p.rpartition(".")
            mod = model.get_submodule(owner) if owner else model
            delattr(mod, attr)
            setattr(mod, attr, m)
        else:
            _replace(model, p, m)


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, new)


def _flat(out: Any) -> list[torch.Tensor]:
    leaves = tree_leaves(out)
    return [t.detach() for t in leaves if isinstance(t, torch.Tensor) and t.is_floating_point()]
