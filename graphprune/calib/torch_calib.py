"""Calibration, gradients and compensation on a traced torch program.

``collect`` runs the original program over the calibration batches once and keeps
running statistics at every site. ``compensate`` walks the graph site by site:
every batch is advanced through the original and the masked (pruned) program to
the next site whose input lost channels, the Grams are accumulated, the site is
refit, and the pruned walk goes on with the new weights. Each site is visited once,
so the cost grows linearly with depth.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from ..errors import PlanError
from ..graph import DependencyGraph
from ..planner import PrunePlan, keep_masks
from ..progress import progress
from .compensate import Compensation, affected_sites, refit_from_stats, refit_site
from .sites import Site
from .stats import Gram, SiteStats, features, real_rows
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
    result = Compensation()
    todo = affected_sites(dg, plan, sites, result)
    if mode == "sequential":
        _walk_grams(dg, ep, batches, keep_masks(dg, plan), todo, tensors, add_bias, result)
        return result
    have = stats or {}
    missing = [s for s, _ in todo if have.get(s.node) is None or have[s.node].gram is None]
    if missing:
        have = dict(have, **collect(ep, batches, missing, {s.node for s in missing}))
    refit_from_stats(dg, todo, tensors, have, mode, add_bias, result)
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
        w_path, b_path, new_w, new_b = refit_site(dg, s, keep, tensors, hd.m, c.m, hp.m, "refit", add_bias, result,
                                                   [tuple(g.m for g in f) for f in folds if f[0].m is not None])
        pruned.overrides[w_path] = new_w
        if b_path is not None:
            pruned.overrides[b_path] = new_b
        elif new_b is not None:
            pruned.runner.extra_bias[s.node] = (-1 if s.kind == "linear" else 1, new_b)
