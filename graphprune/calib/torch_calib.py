"""Calibration, gradients and compensation on a traced torch program.

``collect`` runs the original program over the calibration batches once and keeps
running statistics at every site. ``compensate`` walks the graph site by site:
every batch is advanced through the original and the masked (pruned) program to
the next site whose input lost channels, the Grams are accumulated, the site is
refit, and the pruned walk goes on with the new weights. Each site is visited once,
so the cost grows linearly with depth.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..errors import PlanError
from ..graph import DependencyGraph
from ..planner import PrunePlan, keep_masks
from ..progress import progress
from .refit import refit
from .sites import Site
from .stats import Gram, SiteStats, features, real_rows, refittable
from .torch_run import Walk


def check_shapes(ep: torch.export.ExportedProgram, batches: list[tuple[tuple, dict]]) -> None:
    """The traced program has static shapes: every batch must have the example inputs' shapes."""
    from torch.fx._pytree import tree_flatten_spec

    want = [tuple(n.meta["val"].shape) for n in ep.graph.nodes
            if n.op == "placeholder" and n.name in set(ep.graph_signature.user_inputs)]
    for k, (args, kwargs) in enumerate(batches):
        try:
            got = [tuple(t.shape) for t in tree_flatten_spec((tuple(args), dict(kwargs)), ep.call_spec.in_spec)
                   if isinstance(t, torch.Tensor)]
        except Exception as exc:  # pytree raises several types on a structure mismatch
            raise PlanError(f"calibration batch {k} does not have the structure of the example inputs: {exc}") from exc
        if got != want:
            raise PlanError(f"calibration batch {k} has input shapes {got}, but the model was traced with {want}: "
                            "give every batch the example inputs' shapes (pad or cut sequences to one length), or "
                            "trace with a calibration batch as the example inputs")


def collect(ep: torch.export.ExportedProgram, batches: list[tuple[tuple, dict]], sites: list[Site],
            gram: set[str]) -> dict[str, SiteStats]:
    """Statistics of every site's input on the original program (Grams for sites in ``gram``)."""
    walk = Walk(ep, batches)
    at = {walk.node_index(s.node): s for s in sites if walk.node_index(s.node) is not None}
    stats = {s.node: SiteStats(s) for s in at.values()}
    if not at:
        return stats
    stop = max(at) + 1

    def before(i: int, env: dict) -> None:
        s = at.get(i)
        if s is not None:
            stats[s.node].add(walk.value(env, s.x), s.node in gram, walk.valid[current[0]], current[0])

    current = [0]
    for k in progress(range(len(batches)), "calibrating", len(batches)):
        current[0] = k
        walk.advance(stop, before, batch=k)
        walk.envs[k] = {}  # done with this batch
    return stats


def gradients(model: torch.nn.Module, batches: list[tuple[tuple, dict]],
              loss_fn: Callable[[Any, Any], torch.Tensor] | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per parameter: sum over batches of w*g and of (w*g)^2, g the gradient of the loss."""
    params = dict(model.named_parameters())
    acc: dict[str, list[torch.Tensor]] = {}
    flags = {n: p.requires_grad for n, p in params.items()}
    try:
        for p in params.values():
            p.requires_grad_(True)
        for k in progress(range(len(batches)), "gradients", len(batches)):
            args, kwargs = batches[k]
            model.zero_grad(set_to_none=True)
            out = model(*args, **kwargs)
            if loss_fn is not None:
                loss = loss_fn(out, kwargs if kwargs else args)
            else:
                loss = getattr(out, "loss", None) if not isinstance(out, dict) else out.get("loss")
                if loss is None:
                    raise PlanError("the model returns no loss for the calibration batches: pass loss_fn="
                                    "(output, batch) -> scalar, or batches it computes a loss from (labels=...)")
            loss.backward()
            with torch.no_grad():
                for n, p in params.items():
                    if p.grad is None:
                        continue
                    wg = (p * p.grad).double()
                    if n not in acc:
                        acc[n] = [torch.zeros_like(wg), torch.zeros_like(wg)]
                    acc[n][0] += wg
                    acc[n][1] += wg ** 2
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in params.items():
            p.requires_grad_(flags[n])
    out_: dict[str, tuple[np.ndarray, np.ndarray]] = {n: (a[0].numpy(), a[1].numpy()) for n, a in acc.items()}
    for alias_group in _aliases(model).values():  # tied weights: every name sees the same sums
        src = next((a for a in alias_group if a in out_), None)
        for a in alias_group:
            if src is not None:
                out_[a] = out_[src]
    return out_


def _aliases(model: torch.nn.Module) -> dict[int, list[str]]:
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return by_id


@dataclass
class SiteRefit:
    """What compensation did at one site."""

    node: str
    weight: str  # parameter path
    action: str  # "refit", "refit + new bias", "bias", "new bias"
    error_before: float
    error_after: float


@dataclass
class Compensation:
    """Weight updates (full original shapes; zeros where the plan removes) and new biases."""

    updates: dict[str, torch.Tensor] = field(default_factory=dict)
    new_biases: dict[str, tuple[str, torch.Tensor]] = field(default_factory=dict)  # node -> (out value, bias)
    sites: list[SiteRefit] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bias_modules: list[str] = field(default_factory=list)  # modules that were given a bias


def _source(dg: DependencyGraph, value: str) -> str:
    v = dg.ir.values[value]
    return v.source or v.name


def compensate(dg: DependencyGraph, ep: torch.export.ExportedProgram, batches: list[tuple[tuple, dict]],
               plan: PrunePlan, sites: list[Site], tensors: dict[str, np.ndarray], mode: str = "refit",
               add_bias: set[str] = frozenset(), stats: dict[str, SiteStats] | None = None) -> Compensation:
    """Refit every site whose input loses channels under ``plan``; sites in ``add_bias`` have
    no bias and may be given one.

    ``mode``: "refit" fits each site to the original model's output from the original
    model's kept input channels (Grams of the original model: ``stats`` from scoring are
    reused, else one calibration pass); "sequential" fits it from the *pruned* model's
    input, walking the graph site by site so each refit sees the ones before it (it also
    corrects upstream error, but measured worse on MiniLM and SmolLM2: docs/calibration.md);
    "bias" only folds the mean error into the bias.
    """
    masks = keep_masks(dg, plan)
    result = Compensation()
    uses: dict[str, int] = {}
    for s in sites:
        uses[_source(dg, s.w)] = uses.get(_source(dg, s.w), 0) + 1
    order = {n.name: i for i, n in enumerate(dg.ir.nodes)}
    todo: list[tuple[Site, np.ndarray]] = []
    for s in sorted(sites, key=lambda s: order[s.node]):
        key = (s.x, s.x_dim % dg.ir.values[s.x].rank)
        if key not in masks:
            continue
        w_path = _source(dg, s.w)
        if not refittable(s):
            result.skipped.append(f"{w_path}: grouped or 3-D convolution, not refit")
        elif uses[w_path] > 1 or len(dg.ir.aliases.get(w_path, [w_path])) > 1:
            result.skipped.append(f"{w_path}: weight shared with another op, not refit")
        else:
            todo.append((s, masks[key]))
    if mode == "sequential":
        _walk_grams(dg, ep, batches, masks, todo, tensors, add_bias, result)
        return result
    have = stats or {}
    missing = [s for s, _ in todo if have.get(s.node) is None or have[s.node].gram is None]
    if missing:
        have = dict(have, **collect(ep, batches, missing, {s.node for s in missing}))
    for s, keep in todo:
        st = have[s.node]
        h = st.gram.m
        folds = [(g.m, g.m, g.m) for g in st.folds if g.m is not None]
        _refit_site(dg, s, keep, tensors, h, h, h, mode, add_bias, result, folds)
    return result


def _walk_grams(dg, ep, batches, masks, todo, tensors, add_bias, result) -> None:
    """Sequential refits: the original and the pruned program advance together to each site."""
    act_masks: dict[str, list] = {}
    for (value, d), m in masks.items():
        if dg.ir.values[value].kind == "act":
            act_masks.setdefault(value, []).append((d, torch.as_tensor(m)))
    dense, pruned = Walk(ep, batches), Walk(ep, batches, masks=act_masks)
    for s, keep in progress(todo, "compensating", len(todo)):
        i = dense.node_index(s.node)
        if i is None:
            continue
        hd, c, hp = Gram(), Gram(), Gram()
        folds = [(Gram(), Gram(), Gram()), (Gram(), Gram(), Gram())]
        for k in range(len(batches)):
            dense.advance(i, batch=k)
            pruned.advance(i, batch=k)
            xd, xp = dense.value(dense.envs[k], s.x), pruned.value(pruned.envs[k], s.x)
            rows = real_rows(s, xd, dense.valid[k])
            fd, fp = features(s, xd, rows), features(s, xp, rows)
            hd.add(fd)
            c.add(fd, fp)
            hp.add(fp)
            fold = folds[k % 2]
            fold[0].add(fd)
            fold[1].add(fd, fp)
            fold[2].add(fp)
        w_path, b_path, new_w, new_b = _refit_site(dg, s, keep, tensors, hd.m, c.m, hp.m, "refit", add_bias, result,
                                                   [tuple(g.m for g in f) for f in folds if f[0].m is not None])
        pruned.overrides[w_path] = new_w
        if b_path is not None:
            pruned.overrides[b_path] = new_b
        elif new_b is not None:
            pruned.runner.extra_bias[s.node] = (-1 if s.kind == "linear" else 1, new_b)


def _refit_site(dg, s: Site, keep: np.ndarray, tensors, hd, c, hp, mode: str, add_bias, result: Compensation,
                folds=None):
    """Solve one site and record its new weight (and bias) in ``result``."""
    w_path = _source(dg, s.w)
    w = torch.as_tensor(tensors[w_path])
    wo = torch.movedim(w, (s.w_out, s.w_in), (0, 1))
    keep_f = torch.as_tensor(np.repeat(keep, s.window))
    b_path = _source(dg, s.b) if s.b is not None else None
    b = torch.as_tensor(tensors[b_path]) if b_path is not None else None
    r = refit(wo.reshape(wo.shape[0], -1), b, hd, c, hp, keep_f, b is not None or s.node in add_bias,
              "bias" if mode == "bias" else "refit", folds=folds)
    new_w = torch.movedim(r.w.reshape(wo.shape).to(w.dtype), (0, 1), (s.w_out, s.w_in)).contiguous()
    result.updates[w_path] = new_w
    action = "bias" if mode == "bias" else "refit"
    new_b = r.b.to(w.dtype) if r.b is not None else None
    if new_b is not None and b_path is not None:
        result.updates[b_path] = new_b
    elif new_b is not None:
        out_value = next(n.outputs[0] for n in dg.ir.nodes if n.name == s.node)
        result.new_biases[s.node] = (out_value, new_b)
        action += " + new bias"
    result.sites.append(SiteRefit(s.node, w_path, action, r.error_before, r.error_after))
    return w_path, b_path, new_w, new_b
