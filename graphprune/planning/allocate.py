"""Where to prune: per-group ratios from measured sensitivity, at the uniform plan's budget.

A uniform ratio treats the last attention layer like the first FFN; on real models they
are not alike (in all-MiniLM-L6-v2 the last layer's heads cost several times what the
last FFN does). Each group is pruned *alone* at a few ratios around the asked one,
repaired the way the final plan will be (the same refit from the same statistics), and
the model's output error on calibration data is measured. A greedy walk over the lower
convex hull of every group's (parameters removed, error) curve then removes the
cheapest parameters first until the uniform plan's parameter count is reached: the
same budget, spent where it hurts least. Errors are assumed to add across groups;
one-shot pruning is in that regime. Front-end neutral (no torch, no onnx here).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..calib.collect import collect
from ..calib.compensate import Compensation, affected_sites, refit_from_stats
from ..calib.sites import find_sites
from ..errors import PlanError
from ..graph import DependencyGraph, Group
from ..metrics import count_macs, count_params
from .plan import MAX_RATIO, PrunePlan, block_masks, keep_masks, kept_count, make_plan, shape_fn, step_of
from .scoring import output_errors

ALLOCATIONS = ("auto", "uniform", "sensitivity", "global")
LEVELS = (0.5, 1.0, 1.5, 2.0)  # the ratios tried per group, as multiples of the asked ratio
ROWS = 1024  # calibration rows (tokens, or items) the sensitivity runs use at most
# ``auto`` measures sensitivity when the masked runs cost at most this many MACs (about a
# minute on two CPU cores): all-MiniLM-L6-v2 needs 1.3e12, SmolLM2-135M 2.1e13, where six
# minutes of runs bought 0.2 perplexity points over uniform in-domain and lost on other kinds of
# text (docs/calibration.md).
AUTO_MACS = 5e12
# sample() spreads its rows over all the calibration items instead of taking the first batches: on
# EfficientNet-Lite0 at 80% of the MACs (32 photos, then their crops) the spread sample holds fewer
# distinct photos and one-shot agreement fell from 0.74 to 0.63; on SmolLM2 it helped little (docs/
# llm_pruning.md). A tuning constant, read at call time.
SPREAD = False


def resolve_allocation(allocation: str, calib, ratios) -> str:
    """``auto``: sensitivity with calibration data (unless per-group ``ratios`` are given; the
    cost check comes later, in :func:`allocate`), uniform without."""
    if allocation not in ALLOCATIONS:
        raise PlanError(f"allocation must be one of {list(ALLOCATIONS)}, not {allocation!r}")
    if allocation == "sensitivity" and calib is None:
        raise PlanError("allocation='sensitivity' measures each group's cost on data: pass calib=[batch, ...], "
                        "or allocation='uniform'")
    if allocation in ("sensitivity", "global") and ratios:
        raise PlanError(f"ratios= fixes each group's ratio, allocation='{allocation}' chooses them: pass one of the two")
    if allocation == "auto":
        return "sensitivity" if calib is not None and not ratios else "uniform"
    return allocation


@dataclass
class Allocation:
    """Per-group ratios and what they were chosen from."""

    ratios: dict[int, float]
    curves: dict[int, list[tuple[int, float]]] = field(default_factory=dict)  # gid -> (params removed, error)
    target: int = 0  # parameters the uniform plan removes
    removed: int = 0  # parameters this allocation removes
    runs: int = 0
    rows: int = 0
    seconds: float = 0.0
    fallback: bool = False  # the measured levels could not meet the budget together: uniform ratios
    lams: dict[str, float] = field(default_factory=dict)  # each repaired site's ridge strength: the final refit's

    def note(self) -> str:
        if self.fallback:
            return (f"allocation: uniform; the ratios measured for {len(self.curves)} group(s) cannot remove "
                    f"{self.target:,} parameters together ({self.seconds:.1f} s spent measuring)")
        return (f"allocation: sensitivity of {len(self.curves)} group(s) from {self.runs} masked run(s) on "
                f"{self.rows} calibration row(s) ({self.seconds:.1f} s); removes {self.removed:,} parameters "
                f"(uniform: {self.target:,})")


def removed_params(dg: DependencyGraph, plan: PrunePlan, before: int) -> int:

    return before - count_params(dg.ir, shape_fn(dg, plan))


def _levels(g: Group, ratio: float, round_to: int) -> list[tuple[float, int]]:
    """(ratio, channels removed) per distinct level of group ``g``."""
    rt = step_of(g, round_to)
    out: dict[int, float] = {}
    for m in LEVELS:
        r = min(MAX_RATIO, ratio * m)
        n = g.size - kept_count(g.size, r, rt)
        if n > 0:
            out.setdefault(n, r)
    return sorted((r, n) for n, r in out.items())


def sample(program, batches: list, limit: int = ROWS) -> tuple[list, int]:
    """About ``limit`` rows of the calibration batches: the first batches (at least one), or with
    :data:`SPREAD` items evenly spaced over all the batches' items in order, each batch cut to its
    chosen ones with ``program.take`` (the first whole batches where one cannot be cut). Spread, a
    user's text followed by sampled text (hf/generated.py) is measured on both, and ragged batches
    of the same items sample the same ones."""
    rows = [program.rows(b) for b in batches]
    if sum(rows) <= limit:
        return list(batches), sum(rows)
    if not SPREAD:
        return first_batches(program, batches, rows, limit)
    items = [item_count(program, b) for b in batches]
    total = sum(items)
    want = min(total, max(1, int(limit * total // max(sum(rows), 1))))  # items at the mean rows per item
    picked = np.zeros(total, bool)
    picked[np.unique(np.round(np.linspace(0, total - 1, want)).astype(int))] = True
    out, taken, start = [], 0, 0
    for b, n in zip(batches, items):
        mask, start = picked[start:start + n], start + n
        if not mask.any():
            continue
        part = b if mask.all() else program.take(b, mask)
        if part is None:
            return first_batches(program, batches, rows, limit)
        out.append(part)
        taken += program.rows(part)
    return out, taken


def item_count(program, batch) -> int:
    """Items along a batch's leading axis (1 where its first input has none)."""
    first = program.first_input(batch)
    return int(first[0][0]) if first is not None and first[0] else 1


def first_batches(program, batches: list, rows: list[int], limit: int) -> tuple[list, int]:
    """The first batches, up to ``limit`` rows (at least one batch)."""
    out, total = [], 0
    for b, n in zip(batches, rows):
        if out and total + n > limit:
            break
        out.append(b)
        total += n
    return out, total


def estimate(program, groups: list[Group], ratio: float, round_to: int, batches: list) -> tuple[int, float]:
    """(masked runs, their MACs) that sensitivity would take on this model and data."""

    dg = program.graph()
    runs = sum(len(_levels(g, ratio, round_to)) for g in groups)
    _, rows = sample(program, batches)
    per_row = count_macs(dg.ir) / max(1, program.rows(program.oracle_inputs(0)[0]))
    return runs, runs * rows * per_row


def allocate_if_cheap(program, groups: list[Group], scores, ratio: float, round_to: int, batches: list,
                      mode: str | None, stats, forced: bool, notes: list[str],
                      lams: dict[str, float] | None = None) -> Allocation | None:
    """:func:`allocate`, unless (not ``forced``) its masked runs would cost over :data:`AUTO_MACS`;
    either way ``notes`` says what was done."""
    if not forced:
        runs, macs = estimate(program, groups, ratio, round_to, batches)
        if macs > AUTO_MACS:
            notes.append(f"allocation: uniform; measuring each group's sensitivity would take {runs} masked runs "
                         f"({macs:.1e} MACs, over the {AUTO_MACS:.0e} that auto allows): pass "
                         "allocation='sensitivity' to spend the time")
            return None
    alloc = allocate(program, groups, scores, ratio, round_to, batches, mode, stats, lams)
    notes.append(alloc.note())
    return alloc


def allocate(program, groups: list[Group], scores, ratio: float, round_to: int, batches: list,
             mode: str | None, stats, lams: dict[str, float] | None = None) -> Allocation:
    """Per-group ratios removing the uniform plan's parameters where the output suffers least."""
    t0 = time.perf_counter()
    dg = program.graph()
    before = count_params(dg.ir)
    target = removed_params(dg, make_plan(groups, scores, ratio, round_to), before)
    used, rows = sample(program, batches)

    repair = Repair(program, dg, make_plan(groups, scores, ratio, round_to), batches, mode, stats, lams)
    variants, keys = [], []  # (masks, overrides) and (gid, ratio, params removed) per run
    for g in groups:
        for r, _ in _levels(g, ratio, round_to):
            p = make_plan([g], scores, 0.0, round_to, {g.id: r})
            variants.append(repair.variant(p))
            keys.append((g.id, r, removed_params(dg, p, before)))
    err = output_errors(program, used, variants, "allocating")

    curves: dict[int, list[tuple[int, float, float]]] = {g.id: [(0, 0.0, 0.0)] for g in groups}
    for (gid, r, n), e in zip(keys, err):
        curves[gid].append((n, float(e), r))
    # Parameters removed by two groups that share a weight (a conv's input and output channels)
    # are fewer than the sum of each alone: raise the goal until the plan itself meets the budget.
    goal, removed = target, 0
    for _ in range(12):
        ratios = spend_cheapest(groups, curves, goal, round_to, lambda g, r: removed_params(
            dg, make_plan([g], scores, 0.0, round_to, {g.id: r}), before))
        removed = removed_params(dg, make_plan(groups, scores, ratio, round_to, ratios), before)
        if removed >= target or goal >= sum(c[-1][0] for c in map(hull, curves.values())):
            break
        goal = int(math.ceil(goal * target / max(removed, 1)))
    fallback = removed < target
    if fallback:  # the ratios tried cannot reach the budget together: every group takes the asked one
        ratios, removed = {g.id: ratio for g in groups}, target
    return Allocation(ratios, {g: [(n, e) for n, e, _ in c] for g, c in curves.items()}, target, removed,
                      len(variants), rows, time.perf_counter() - t0, fallback, dict(repair.lams))


class Repair:
    """The masked run of any candidate plan, with the refit the final plan would get: one set of
    calibration statistics (and each site's ridge strength, cross-validated once on
    ``reference``) serves every candidate. ``mode`` None: no repair. ``lams`` fixes the ridge
    strength of the sites it names (PruneOptions.ridge)."""

    def __init__(self, program, dg: DependencyGraph, reference: PrunePlan, batches: list, mode: str | None,
                 stats, lams: dict[str, float] | None = None) -> None:

        self.dg, self.mode = dg, mode
        self.sites = find_sites(dg)
        self.stats = dict(stats or {})
        self.tensors = program.tensors()
        self.fit = "bias" if mode == "bias" else "refit"
        self.lams: dict[str, float] = {}
        if mode is not None:  # one pass for the Grams the refits need that scoring did not collect
            uniform = Compensation()
            todo = affected_sites(dg, reference, self.sites, uniform)
            missing = [s for s, _ in todo if self.stats.get(s.node) is None or self.stats[s.node].gram is None]
            if missing:
                self.stats.update(collect(program, batches, missing, {s.node for s in missing}))
            refit_from_stats(dg, todo, self.tensors, self.stats, self.fit, set(), uniform, lams)
            self.lams = {s.node: s.lam for s in uniform.sites if s.lam is not None}

    def variant(self, p: PrunePlan) -> tuple[dict, dict]:
        """(masks, weight overrides) of ``p``'s masked original, repaired."""

        overrides = {}
        if self.mode is not None and any(p.pruned.values()):
            comp = Compensation()
            refit_from_stats(self.dg, affected_sites(self.dg, p, self.sites, comp), self.tensors, self.stats,
                             self.fit, set(), comp, self.lams)
            overrides = comp.updates
        return {**keep_masks(self.dg, p), **block_masks(self.dg, p)}, overrides


def hull(points: list[tuple[int, float, float]]) -> list[tuple[int, float, float]]:
    """The lower convex hull of (params, error, ratio) points sorted by params: a larger
    cut that costs less per parameter than a smaller one makes the smaller one moot."""
    out: list[tuple[int, float, float]] = []
    for p in sorted(points):
        while len(out) >= 2:
            (x1, y1, _), (x2, y2, _) = out[-2], out[-1]
            if (y2 - y1) * (p[0] - x1) >= (p[1] - y1) * (x2 - x1):  # out[-1] lies on or above the chord
                out.pop()
            else:
                break
        if not out or p[0] > out[-1][0]:
            out.append(p)
    return out


def spend_cheapest(groups: list[Group], curves, target: int, round_to: int,
                   count: Callable[[Group, float], int]) -> dict[int, float]:
    """Take hull segments cheapest per parameter first until ``target`` parameters are removed;
    the segment that crosses the target is taken in part: at the fewest channels whose removal,
    counted by ``count(group, ratio)`` (the group alone), reaches it. Counted, not interpolated:
    a recurrent layer's weights are hidden x hidden, and a linear guess removed 12% more than asked.

    Where the crossing group's unit is coarse (a head: PiT's first stage at 4 heads, one head
    13% of the model's MACs), reaching the target in it can overshoot it far; one unit fewer there
    and the rest from the next segments is taken instead where that costs less error (each segment's
    error taken as linear in what it saves)."""
    segs = []
    for g in groups:
        h = hull(curves[g.id])
        for a, b in zip(h, h[1:]):
            segs.append(((b[1] - a[1]) / (b[0] - a[0]), g.id, a, b))
    segs.sort(key=lambda s: (s[0], s[1], s[2][0]))
    ratios = {g.id: 0.0 for g in groups}
    _fill(segs, {g.id: g for g in groups}, target, round_to, count, ratios, True)
    return ratios


def _fill(segs: list, by_id: dict, target: int, round_to: int, count, ratios: dict[int, float],
          alternative: bool) -> float | None:
    """Spend ``segs`` into ``ratios`` (in place) until ``target`` is removed: the error that costs by the
    segments' slopes, or None where they cannot reach it."""
    removed, spent = 0, 0.0
    for i, (slope, gid, a, b) in enumerate(segs):
        if removed >= target:
            break
        if ratios[gid] != a[2]:  # an earlier segment of this group was not taken (cannot happen on a hull)
            continue
        if removed + b[0] - a[0] <= target:
            ratios[gid], removed, spent = b[2], removed + b[0] - a[0], spent + slope * (b[0] - a[0])
            continue
        g = by_id[gid]
        rt = step_of(g, round_to)

        def ratio_at(n: int) -> float:  # the ratio that removes n channels, at the group's steps
            return (g.size - kept_count(g.size, n / g.size, rt)) / g.size

        lo, hi = math.ceil(g.size * a[2] - 1e-9), math.ceil(g.size * b[2] - 1e-9)
        while lo < hi:  # the fewest channels past a's whose removal reaches the target: parameters grow with them
            mid = (lo + hi) // 2
            if count(g, ratio_at(mid)) - a[0] >= target - removed:
                hi = mid
            else:
                lo = mid + 1
        # the ratio whose channel count first reaches the budget: never fewer parameters removed
        # than the uniform plan (at most one channel, or head, more)
        ratios[gid] = ratio_at(lo)
        here = spent + slope * (count(g, ratios[gid]) - a[0])
        less = max((r for r in map(ratio_at, range(math.ceil(g.size * a[2] - 1e-9), lo)) if r < ratios[gid]),
                   default=None)  # one unit fewer removed than that
        if alternative and less is not None and less >= a[2]:
            other = dict(ratios)
            other[gid] = less
            got = count(g, less) - a[0]
            rest = _fill(segs[i + 1:], by_id, target - removed - got, round_to, count, other, False)
            if rest is not None and spent + slope * got + rest < here:
                ratios.update(other)
                return spent + slope * got + rest
        return here
    return spent if removed >= target else None
