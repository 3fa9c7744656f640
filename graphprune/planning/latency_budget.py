"""Latency and speedup budgets, spent with a measured latency table (NetAdapt / HALP style)."""
from __future__ import annotations

import math

from ..errors import PlanError
from ..util.progress import progress_line
from .budget import BudgetResult, CostModel, parse_budget, solve_budget, uniform_kept
from .latency_table import LatencyModel
from .plan import make_plan


def solve_latency_budget(program, runtime, dg, groups, scores, budget, round_to, how, max_ratio, notes):
    """A latency (or speedup) budget, spent with a measured latency table (graphprune/planning/
    latency_table.py): the budget solver costs each candidate from the table, the chosen plan is
    measured on the runtime, and the table's target is corrected by the ratio of measured to
    asked (at most four plans measured, where bisection on whole models measured eight)."""

    if runtime is None:
        raise PlanError("a latency or speedup budget is measured on a runtime: pass runtime='auto', 'torch' or "
                        "'onnxruntime', not None")
    cost = CostModel(dg, groups)
    original = cost.measure({})
    parse_budget(budget, original)  # every key checked before the first (slow) measurement
    before = program.latency_ms(runtime)
    target = float(budget["latency_ms"]) if "latency_ms" in budget else before / float(budget["speedup"])
    rest = {k: v for k, v in budget.items() if k not in ("latency_ms", "speedup")}
    if before <= target and not rest:
        notes.append(f"latency budget: the model already runs in {before:.3f} ms <= {target:.3f} ms; nothing pruned")
        return {g.id: 0.0 for g in groups}, BudgetResult({}, original, dict(original), how, 0.0,
                                                         (target, before, before))
    steps = list(round_to.values()) if isinstance(round_to, dict) else [round_to]
    cost.latency = LatencyModel(dg, runtime, before, lambda slot: max(steps + [1]),
                                progress=lambda k, n: progress_line(f"latency table: layer {k}/{n}"), groups=groups)

    def measure(ratios) -> float:
        return program.plan_latency_ms(make_plan(groups, scores, 0.0, round_to, ratios), runtime)

    kept = uniform_kept(groups, max_ratio, round_to)  # the most-pruned plan the budget may choose
    smallest = {g.id: (g.size - kept[g.id]) / g.size for g in groups}
    floor = cost.measure(kept)["latency_us"] / 1000

    def reachable() -> float:
        """The most-pruned plan measured; the budget is refused when even it misses the target."""
        real = measure(smallest)
        if real > target:
            asked = f"latency_ms={target:g}" if "latency_ms" in budget else f"speedup={budget['speedup']:g}"
            raise PlanError(f"budget {asked} cannot be met on {runtime}: the model runs in {before:.3f} ms, and "
                            f"removing {max_ratio:.0%} of every selected group still runs in {real:.3f} ms (the "
                            f"latency table puts {cost.latency.rest:.3f} ms outside the convolutions and linears it "
                            "times). Select more kinds, remove blocks (targets including 'blocks'), or relax the "
                            "budget")
        return real

    aim = target
    if floor > target:  # the table may be pessimistic (standalone ops, per-run overheads): ask the runtime
        real = reachable()
        # map the target onto the table's scale: a saving measured as (before - real) was estimated as
        # (before - floor)
        aim = before - (before - target) * (before - floor) / max(before - real, 1e-9)
    trials = _trials(lambda a: solve_budget(dg, groups, scores, {**rest, "latency_ms": max(a, floor)}, round_to,
                                            how, max_ratio, cost=cost), measure, aim, target)
    if not any(t[0] <= target for t in trials):  # the table thought it reachable; the runtime decides
        reachable()
        trials += _trials(lambda a: solve_budget(dg, groups, scores, {**rest, "latency_ms": floor}, round_to, how,
                                                 max_ratio, cost=cost), measure, floor, target, tries=1)
    fits = [t for t in trials if t[0] <= target]
    ms, aim, ratios, spent = max(fits, key=lambda t: t[0]) if fits else min(trials, key=lambda t: t[0])
    spent.latency = (target, before, ms)
    notes.append(f"latency budget on {runtime}: table of {len(cost.latency.ops)} layer(s) "
                 f"({cost.latency.table.measured} op(s) timed, the rest cached); planned -> measured: " +
                 ", ".join(f"{a:.2f} -> {m:.2f} ms" for m, a, _, _ in trials))
    if not fits:
        notes.append(f"latency budget not met: the closest plan runs in {ms:.3f} ms (target {target:.3f} ms)")
    return ratios, spent


def _trials(solve, measure, aim: float, target: float, tries: int = 4) -> list[tuple]:
    """Plans solved on the table at ``aim`` and measured, the aim corrected by the table's error at
    each size (bisecting once a correction overshoots what earlier plans showed), until one lands
    within 5% under ``target``: [(measured ms, aim, ratios, BudgetResult)]."""
    trials, fit, miss = [], 0.0, math.inf  # aims whose plans met / missed the target
    for _ in range(tries):
        ratios, spent = solve(aim)
        ms = measure(ratios)
        trials.append((ms, aim, ratios, spent))
        if 0.95 * target <= ms <= target:
            break
        fit, miss = (max(fit, aim), miss) if ms <= target else (fit, min(miss, aim))
        aim = aim * target / ms
        if not fit < aim < miss:
            aim = (fit + miss) / 2 if miss < math.inf else aim
    return trials
