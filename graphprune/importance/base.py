"""The criteria registry and what a criterion may read.

A criterion maps each selected group to one score per index (higher = keep). It
reads a :class:`ScoreContext`: the graph, the weights, and, when the user gave
calibration data, the statistics at every consumer site (and accumulated
gradients for loss-based criteria). Scores are normalised per group (mean 1), so
groups compare across layers whatever the scale of their weights.

Registering a criterion of your own is one line::

    @graphprune.register_importance("mine", needs="calib")
    def mine(ctx, groups): return {g.id: ... for g in groups}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from ..calib.sites import find_sites, sites_by_group
from ..calib.stats import gram_sites
from ..errors import PlanError
from ..graph import DependencyGraph, Group

NEEDS = ("", "calib", "grad")


@dataclass
class ScoreContext:
    """Everything a criterion may read."""

    dg: DependencyGraph
    tensors: Mapping[str, np.ndarray | None]  # parameter path -> values (None on meta)
    stats: dict | None = None  # site node -> calib.stats.SiteStats (with calibration data)
    sites_of: dict[int, list] = field(default_factory=dict)  # group id -> calib.sites.Site list
    grads: dict[str, tuple[np.ndarray, np.ndarray]] | None = None  # path -> (sum w*g, sum (w*g)^2)
    notes: list[str] = field(default_factory=list)  # fallbacks, said in the report
    # group id -> the criterion that ranked it where the one asked for could not (the report's importance line)
    fell_back: dict[int, str] = field(default_factory=dict)
    obs_max_features: int | None = None  # obs ranks wider consumers' groups by activation (the default call)

    def weight(self, name: str) -> np.ndarray:
        w = self.tensors.get(name)
        if w is None:
            raise PlanError(f"parameter '{name}' has no values (meta device?): use importance='random' "
                            "or load weights before ranking by weights or data")
        return w


@dataclass(frozen=True)
class Criterion:
    name: str
    fn: Callable[[ScoreContext, list[Group]], dict[int, np.ndarray]]
    needs: str  # "": weights only; "calib": calibration statistics; "grad": gradients of a loss
    doc: str = ""


CRITERIA: dict[str, Criterion] = {}


def register_importance(name: str, needs: str = "") -> Callable:
    """Decorator: register ``fn(ctx, groups) -> {group id: scores}`` as importance ``name``."""
    if needs not in NEEDS:
        raise ValueError(f"needs must be one of {NEEDS}, not {needs!r}")

    def deco(fn: Callable) -> Callable:
        CRITERIA[name] = Criterion(name, fn, needs, (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return deco


def attach_stats(ctx: ScoreContext, groups: list[Group], name: str, collect) -> None:
    """Fill ``ctx.stats`` for the sites of ``groups``: ``collect(sites, gram_nodes)`` runs the
    model over the calibration batches (the traced program, or onnxruntime); Grams only where
    the ``obs`` criterion needs them."""

    ctx.sites_of = sites_by_group(ctx.dg, find_sites(ctx.dg), [g.id for g in groups])
    wanted = list({s.node: s for ss in ctx.sites_of.values() for s in ss}.values())
    gram = gram_sites(ctx.dg, wanted, ctx.notes) if name == "obs" else set()
    ctx.stats = collect(wanted, gram)


def score_groups(name: str, ctx: ScoreContext, groups: list[Group]) -> dict[int, np.ndarray]:
    """Run criterion ``name`` and normalise each group's scores to mean 1."""
    if name not in CRITERIA:
        raise PlanError(f"unknown importance '{name}'; choose one of {sorted(CRITERIA) + ['auto']}")
    crit = CRITERIA[name]
    if crit.needs == "calib" and ctx.stats is None:
        raise PlanError(f"importance '{name}' ranks channels from data: pass calib=[batch, ...] (inputs like the "
                        "example inputs), or choose a weight criterion (l1, l2, lamp, bn_scale, random)")
    if crit.needs == "grad" and ctx.grads is None:
        raise PlanError(f"importance '{name}' needs gradients of a loss: pass calib=[...] and loss_fn="
                        "(output, batch) -> scalar, or batches the model computes its own loss from (labels=...)")
    raw = crit.fn(ctx, groups)
    out = {}
    for g in groups:
        s = np.asarray(raw[g.id], dtype=np.float64)
        if s.shape != (g.size,):
            raise PlanError(f"importance '{name}' gave {s.shape} scores for group {g.id} of size {g.size}")
        mean = float(np.mean(np.abs(s)))
        out[g.id] = s / mean if mean > 0 and np.isfinite(mean) else s
    return out


def with_fallback(ctx: ScoreContext, groups: list[Group], score_one: Callable[[Group], np.ndarray | None],
                  fallback: Callable[[ScoreContext, list[Group]], dict[int, np.ndarray]], why: str, by: str) -> dict:
    """Score each group with ``score_one``; groups it cannot score (None) go to ``fallback`` (the
    criterion named ``by``), and the report's notes say how many and why."""
    out, rest = {}, []
    for g in groups:
        s = score_one(g)
        if s is None:
            rest.append(g)
        else:
            out[g.id] = s
    if rest:
        out.update(fallback(ctx, rest))
        ctx.notes.append(f"{why}, ranked by {by} instead: {len(rest)} group(s) (first: group {rest[0].id}, {rest[0].kind})")
        for g in rest:  # a nested fallback recorded its own first: the criterion that really ranked the group
            ctx.fell_back.setdefault(g.id, by)
    return out


def scatter(score: np.ndarray, coords: list[np.ndarray], per_position: np.ndarray) -> None:
    """Add each position's value to the group index it belongs to (every occurrence votes)."""
    for c in coords:
        sel = c >= 0
        np.add.at(score, c[sel], per_position[sel])
