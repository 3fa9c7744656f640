"""Budgets: prune to a MACs or parameter target instead of a per-group ratio.

``budget={"macs": 0.5}`` keeps half the MACs, ``{"params": 20e6}`` at most 20 M parameters
(a value <= 1 is a fraction of the original, above 1 an absolute count); several keys must all
hold. The planner searches one scalar: the uniform ratio (``allocation="uniform"``), or a
threshold on importance normalised per group (``allocation="global"``: each group loses the
channels scoring below it, at most ``max_ratio`` of the group). Every candidate is costed
from the channel spaces alone: a slot's new size is its layout term evaluated on the kept
counts of its atoms (a sum over a concat, a product over a factorisation), so no mask and no
tracing is needed per step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from ..errors import PlanError
from ..graph import DependencyGraph, Group
from ..metrics import count_macs, count_params
from .give_back import fits, give_back, lots
from .plan import MAX_RATIO, frozen_channels, frozen_summary, kept_count, step_of

# the counted budget kinds: name -> counter(ir, shape_fn). A new kind is a counter (metrics.py) and a row here
METRICS: dict[str, Callable] = {"macs": count_macs, "params": count_params}
LATENCY = "latency_ms"  # on the target runtime at the example inputs: a measured table, then the plan measured
SPEEDUP = "speedup"  # the original's measured latency over this: a latency budget


@dataclass
class BudgetResult:
    """What a budget asked for and what the plan achieves (absolute counts)."""

    targets: dict[str, int]
    original: dict[str, int]
    achieved: dict[str, int] = field(default_factory=dict)
    allocation: str = "uniform"
    scalar: float = 0.0  # the uniform ratio or the global threshold found
    # latency budgets: (target, before, after) in ms, onnxruntime on one thread at the example batch
    latency: tuple[float, float, float] | None = None

    def __str__(self) -> str:
        parts = []
        if self.latency is not None:
            t, b, a = self.latency
            parts.append(f"latency {a:.3f} ms of {b:.3f} ms when planned (target {t:g} ms, {a / t - 1:+.1%}; "
                         "onnxruntime, one thread, the example inputs' batch)")
        for k, t in self.targets.items():
            if k == "latency_us":
                continue  # the measured latency above says it
            a, o = self.achieved.get(k, 0), self.original[k]
            parts.append(f"{k} {a:,} of {o:,} ({a / max(o, 1):.1%}; target {t:,}, {a / max(t, 1) - 1:+.1%})")
        return f"budget ({self.allocation}): " + "; ".join(parts)


# A plan this far under its target (a share of the target) prunes more than was asked. Coarse width multiples on a
# model with few groups land there: a user's EEG detector asked for half its MACs and got 41.7% when channels were
# kept at multiples of 16, and 49.8% at any width. Width candidates that far under are not weighed against closer
# ones (widths.py), and a plan still that far under says so in a PruneWarning (pipeline.py).
BUDGET_SLACK = 0.02


def _binding(spent: BudgetResult | None) -> tuple[float, str | None]:
    """(how far under its target the plan lands, as a share of the target, and that key) on the counted
    budget it meets most closely: with several keys, the one that binds. (0, None) where none counts."""
    if spent is None or spent.latency is not None or "latency_us" in spent.targets:
        return 0.0, None  # a latency target binds: the counted keys beside it land under theirs by nature
    gaps = [((t - spent.achieved[k]) / max(t, 1), k) for k, t in spent.targets.items()
            if k in METRICS and k in spent.achieved]
    gap, key = min(gaps) if gaps else (0.0, None)
    return max(0.0, gap), key


def shortfall(spent: BudgetResult | None) -> float:
    """How far under its target a plan lands on the counted budget it meets most closely, as a share
    of that target (0: on it, or no counted budget)."""
    return _binding(spent)[0]


def missed(spent: BudgetResult | None, round_to, lockstep: bool = False) -> str:
    """What a PruneWarning says where a plan lands more than :data:`BUDGET_SLACK` under its budget, else ''.
    ``lockstep``: uniform=True, which gives units back to every group of a kind at once."""
    gap, k = _binding(spent)
    if gap <= BUDGET_SLACK:
        return ""
    o = max(spent.original[k], 1)
    steps = sorted(set(round_to.values()) if isinstance(round_to, dict) else {round_to})
    how = ("uniform=True gives units back to every group of a kind at once; uniform=False lands closer" if lockstep
           else "the measured allocation cut further where one more unit (a head, a group of channels) cost less "
           "output error on the calibration data than reaching the target in other groups; allocation='uniform' "
           "lands closer" if spent.allocation == "sensitivity"
           else f"at the channel multiples kept ({', '.join(map(str, steps))}), round_to=1 (--round-to 1) allows any "
           "width" if max(steps) > 1 else "each group's unit of pruning (a head, a group of channels) allows no "
           "closer plan; select more kinds (targets=) to spend it in finer steps")
    return (f"budget {k}: the plan keeps {spent.achieved[k] / o:.1%} of the original's {k} where "
            f"{spent.targets[k] / o:.1%} was asked ({gap:.1%} under the target, more pruning than asked): {how}")


def key_values(text: str, what: str = "budget", example: str = "macs=0.5 or params=20e6") -> dict[str, float]:
    """``"macs=0.5,params=20e6"`` (the CLI's spelling of budgets and ratio overrides) as a dict."""
    items = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.rpartition("=")
        if not sep or not key.strip():
            raise PlanError(f"{what} item '{part}' is not KEY=VALUE (for example {example})")
        if key.strip() in items:
            raise PlanError(f"{what} gives '{key.strip()}' twice ({text}); give each key once")
        try:
            items[key.strip()] = float(value)
        except ValueError:
            raise PlanError(f"{what} value '{value}' for '{key.strip()}' is not a number") from None
    return items


def parse_budget(budget: Mapping[str, float] | str, original: Mapping[str, int]) -> dict[str, int]:
    """Absolute targets from ``{"macs": 0.5, "params": 20e6}`` or ``"macs=0.5,params=20e6"``."""
    if isinstance(budget, str):
        budget = key_values(budget)
    if not budget:
        raise PlanError("an empty budget: give macs= and/or params= (a fraction <= 1 or an absolute count), or "
                        "latency_ms=")
    for key in (LATENCY, SPEEDUP):
        v = budget.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or math.isinf(v):
            raise PlanError(f"budget {key}={v!r} must be a positive number" +
                            (" of milliseconds" if key == LATENCY else " (2.0: twice as fast)"))
        if key == SPEEDUP and v < 1:
            raise PlanError(f"budget speedup={v!r} asks for a slower model; give a speedup >= 1 (2.0: twice as fast)")
    out = {}
    for key, value in budget.items():
        if key == LATENCY and "latency_us" in original:  # a latency table costs it (graphprune/planning)
            out["latency_us"] = int(round(value * 1000))
            continue
        if key in (LATENCY, SPEEDUP):
            continue  # measured: the pipeline turns these into a latency table's target
        if key not in METRICS:
            raise PlanError(f"unknown budget '{key}'; budgets are {list(METRICS) + [LATENCY, SPEEDUP]} (macs/params: "
                            "a fraction <= 1 of the original, or an absolute count; latency_ms: milliseconds; "
                            "speedup: the original's latency over the pruned one's)")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
            raise PlanError(f"budget {key}={value!r} must be a positive number")
        if value > 1 and value != int(value):  # 1.5: neither a fraction of the model nor a count of anything
            raise PlanError(f"budget {key}={value:g} is neither a fraction <= 1 of the model's {key} ({key}=0.8 keeps "
                            f"80%) nor a whole count ({key}={int(original[key] * 0.8)} keeps that many)")
        if 1 < value < min(0.01 * original[key], 10_000):  # macs=2: a count, surely meant as a fraction
            raise PlanError(f"budget {key}={value:g} is a count (above 1): {int(value):,} of the model's "
                            f"{original[key]:,} {key}; a fraction of the original is written <= 1 ({key}=0.5)")
        out[key] = int(round(value * original[key])) if value <= 1 else int(value)
        if out[key] > original[key]:
            raise PlanError(f"budget {key}={value:g} asks for more than the model has ({original[key]:,})")
    return out


class CostModel:
    """MACs and parameters of the model for any kept count per group, from layout terms."""

    def __init__(self, dg: DependencyGraph, groups: list[Group], dead: set[str] = frozenset()) -> None:
        self.dg = dg
        self.dead = dead  # values removed blocks leave dead (graphprune/blocks.py): size 0
        self.sizes = {g.id: g.size for g in groups}
        self._terms: dict[tuple[str, int], tuple] = {}  # only slots some selected group cuts
        atoms = set(self.sizes)
        solver = dg.solver
        for v in dg.ir.values.values():
            for d in range(v.rank):
                term = solver.layout((v.name, d))
                if atoms.intersection(solver.atoms(term)):
                    self._terms[(v.name, d)] = term

    def _size(self, term: tuple, kept: Mapping[int, int]) -> int:
        kind, body = term
        if kind == "a":
            return kept.get(body, self.dg.solver.atom_size(body))
        sizes = [self._size(t, kept) for t in body]
        return int(sum(sizes)) if kind == "c" else int(np.prod(sizes, dtype=np.int64))

    latency = None  # a graphprune.planning.latency_table.LatencyModel: measure() then estimates latency too

    def slot_size(self, slot: tuple[str, int], kept: Mapping[int, int]) -> int:
        """A (value, dim)'s size when each group keeps ``kept`` of its channels."""
        term = self._terms.get(slot)
        return self._size(term, kept) if term is not None else int(self.dg.ir.values[slot[0]].shape[slot[1]])

    def measure(self, kept: Mapping[int, int]) -> dict[str, int]:
        values = self.dg.ir.values

        def shape_of(name: str) -> tuple:
            if name in self.dead:
                return (0,) * values[name].rank
            return tuple(self._size(self._terms[(name, d)], kept) if (name, d) in self._terms else s
                         for d, s in enumerate(values[name].shape))

        out = {name: count(self.dg.ir, shape_of) for name, count in METRICS.items()}
        if self.latency is not None:
            out["latency_us"] = int(round(1000 * self.latency.estimate(lambda slot: self.slot_size(slot, kept))))
        return out


def _rounding(g: Group, round_to) -> int:
    return step_of(g, round_to)


def _beyond_reach(dg: DependencyGraph, groups: list[Group], dead, targets: dict, key: str, max_ratio: float,
                  round_to) -> str:
    """The fix for a budget the selected groups cannot meet: more kinds where the other prunable groups
    would meet it, else what keeps the rest whole (MoE experts behind an op with no rule: every kind
    at 90% still left Mixtral over its budget, and the advice to select more kinds was futile)."""
    every = [g for g in dg.groups if g.prunable]
    counted = {k: t for k, t in targets.items() if k in METRICS}  # a latency target is timed, not counted here
    if len(every) <= len(groups):
        left = None
    else:
        left = CostModel(dg, every, dead).measure(uniform_kept(every, max_ratio, round_to))
        if fits(left, counted):  # name what is left out (IGCV3: 48 group_channel groups the defaults skip)
            chosen, kinds = {g.id for g in groups}, dg.kinds
            other = sorted({kinds.get(g.id, g.role) for g in every if g.id not in chosen})
            count = sum(g.id not in chosen for g in every)
            return (f"{count} prunable group(s) of kind(s) {other} are not selected and would meet it: add them to "
                    f"targets= (graph.summary() lists every group's kind), raise max_ratio, or relax the budget")
    reach = ("The selected groups are all the prunable ones" if left is None else
             f"Every prunable group at {max_ratio:.0%} still leaves {left[key]:,}")
    rest = (f"what each group keeps at max_ratio, and what groups kept whole hold ({frozen_summary(dg)})"
            if frozen_channels(dg.groups)  # model inputs and outputs aside: whole by design
            else "what each group keeps at max_ratio (no group is kept whole)")
    return f"{reach}: the rest is {rest}. Raise max_ratio (below 1), or relax the budget"


def uniform_kept(groups: list[Group], ratio: float, round_to: int,
                 tilt: Mapping[int, float] | None = None, cap: float = MAX_RATIO) -> dict[int, int]:
    """Each group at ``ratio``; with ``tilt`` (group id -> w, planning/time_tilt.py) a group keeps
    (1 - ratio) ** w of its channels instead, losing at most ``cap`` of them."""
    if not tilt:
        return {g.id: kept_count(g.size, ratio, _rounding(g, round_to)) for g in groups}
    return {g.id: kept_count(g.size, min(1.0 - (1.0 - ratio) ** tilt.get(g.id, 1.0), cap),
                             _rounding(g, round_to)) for g in groups}


def _floored(kept_at: Callable, groups: list[Group], floors: Mapping[int, int], round_to) -> Callable:
    """``kept_at`` with each group kept at its floor at least (cliffs.py), rounded up to its step."""
    least = {g.id: kept_count(g.size, 1 - floors[g.id] / g.size, _rounding(g, round_to)) for g in groups if g.id in floors}
    return lambda x: {gid: max(k, least.get(gid, 0)) for gid, k in kept_at(x).items()}


def global_kept(groups: list[Group], normed: Mapping[int, np.ndarray], threshold: float, round_to: int,
                max_ratio: float) -> dict[int, int]:
    """Each group loses its channels scoring below ``threshold`` (normalised), at most max_ratio."""
    out = {}
    for g in groups:
        drop = min(int((normed[g.id] < threshold).sum()), math.floor(g.size * max_ratio + 1e-9))
        out[g.id] = kept_count(g.size, drop / g.size, _rounding(g, round_to))
    return out


def normalise(groups: list[Group], scores: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Scores divided by their group's mean: comparable across layers of different scale."""
    out = {}
    for g in groups:
        s = np.asarray(scores[g.id], dtype=np.float64)
        mean = float(np.abs(s).mean()) if s.size else 0.0
        out[g.id] = s / mean if mean > 0 else np.zeros_like(s)
    return out


def per_millisecond(cost: CostModel, groups: list[Group], normed: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Importance per millisecond a channel saves (HALP's ranking): each group's normalised
    scores divided by its channels' latency saving relative to the average group's, from the
    latency table (the estimate with a quarter of the group removed, everything else whole)."""
    full = cost.measure({})["latency_us"]
    saving = {}
    for g in groups:
        k = g.size - max(1, g.size // 4)
        saving[g.id] = max(full - cost.measure({g.id: k})["latency_us"], 0) / max(g.size - k, 1)
    mean = float(np.mean([v for v in saving.values() if v > 0] or [1.0]))
    floor = 0.05 * mean  # a channel the table sees no time in still costs something (overheads it does not time)
    return {g.id: normed[g.id] * mean / max(saving[g.id], floor) for g in groups}


def solve_budget(dg: DependencyGraph, groups: list[Group], scores: Mapping[int, np.ndarray],
                 budget: Mapping[str, float] | str, round_to: int = 1, allocation: str = "uniform",
                 max_ratio: float = MAX_RATIO, steps: int = 40, dead: set[str] = frozenset(),
                 original: dict[str, int] | None = None,
                 cost: "CostModel | None" = None,
                 tilt: Mapping[int, float] | None = None, lockstep: bool = False,
                 floors: Mapping[int, int] | None = None) -> tuple[dict[int, float], BudgetResult]:
    """Per-group ratios that meet ``budget`` as closely as the channel granularity allows (never
    above it); and what they achieve. ``dead``: values gone with removed blocks (the budget is
    then spent on what they leave; ``original`` the unpruned model's counts). ``tilt``: the
    uniform ratio bent per group (:func:`uniform_kept`). ``lockstep`` (``uniform=True``): groups of
    one kind and size keep one count, units given back to all of them at once."""
    if allocation not in ("uniform", "global"):
        raise PlanError(f"a budget is allocated 'uniform' or 'global', not {allocation!r}")
    if not 0 < max_ratio < 1:
        raise PlanError(f"max_ratio must be in (0, 1), got {max_ratio!r}")
    cost = cost or CostModel(dg, groups, dead)
    original = original or (cost.measure({}) if not dead else CostModel(dg, groups).measure({}))
    targets = parse_budget(budget, original)
    if not targets:
        raise PlanError("solve_budget takes macs= / params=; a latency budget is searched by measuring")
    result = BudgetResult(targets, original, allocation=allocation + (", tilted towards time" if tilt else ""))
    normed = normalise(groups, scores)
    if allocation == "global" and cost.latency is not None and "latency_us" in targets:
        normed = per_millisecond(cost, groups, normed)
    if allocation == "uniform":
        lo, hi = 0.0, max_ratio
        kept_at = lambda x: uniform_kept(groups, x, round_to, tilt, max_ratio)  # noqa: E731
    else:
        every = np.concatenate([normed[g.id] for g in groups]) if groups else np.zeros(1)
        lo, hi = float(every.min()), float(every.max()) + 1e-9
        kept_at = lambda x: global_kept(groups, normed, x, round_to, max_ratio)  # noqa: E731
    if floors:
        kept_at = _floored(kept_at, groups, floors, round_to)
    most = kept_at(hi)
    got = cost.measure(most)
    if not fits(got, targets):
        worst = max(targets, key=lambda k: got[k] / max(targets[k], 1))
        raise PlanError(f"budget {worst}={targets[worst]:,} cannot be met by pruning the selected groups: removing "
                        f"{max_ratio:.0%} of each leaves {got[worst]:,} (of {original[worst]:,}). "
                        + _beyond_reach(dg, groups, dead, targets, worst, max_ratio, round_to))
    best, best_got = kept_at(lo), cost.measure(kept_at(lo))
    if fits(best_got, targets):
        hi = lo  # nothing needs pruning
    else:
        best, best_got = most, got
        for _ in range(steps):  # the least pruning that still fits: cost falls as the scalar grows
            mid = (lo + hi) / 2
            kept = kept_at(mid)
            got = cost.measure(kept)
            if fits(got, targets):
                hi, best, best_got = mid, kept, got
            else:
                lo = mid
    if tilt:  # units are given back where a MAC costs least time first (w > 1: more time per MAC)
        normed = {gid: v / tilt.get(gid, 1.0) for gid, v in normed.items()}
    best, best_got = give_back(cost, groups, normed, best, best_got, targets, round_to, lots(groups, lockstep))
    result.achieved, result.scalar = best_got, hi
    ratios = {g.id: (g.size - best[g.id]) / g.size for g in groups}
    return ratios, result


def check_selected(dg, budget: Mapping) -> None:
    """A budget the targets give no group to spend on is refused, not returned unpruned with a warning."""
    kinds = sorted({g.kind for g in dg.prunable_groups()})
    if kinds:
        raise PlanError(f"budget {dict(budget)} cannot be met: the targets select no group, and the model's "
                        f"prunable kinds are {kinds}. Pass targets= naming some of them (graph.summary() lists them)")
