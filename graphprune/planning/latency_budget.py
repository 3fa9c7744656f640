"""Latency and speedup budgets, spent with a measured latency table (NetAdapt / HALP style)."""
from __future__ import annotations

from ..errors import PlanError
from ..util.progress import progress_line
from .budget import BudgetResult, CostModel, parse_budget, solve_budget, uniform_kept
from .latency_table import LatencyModel
from .plan import make_plan


def solve_latency_budget(program, runtime, dg, groups, scores, budget, round_to, how, max_ratio, notes):
    """A latency (or speedup) budget, spent with a measured latency table (graphprune/planning/
    latency_table.py): the budget solver costs each candidate from the table, the chosen plan is
    measured on the runtime, and the next table aim is interpolated from the plans measured so
    far (:func:`_next_aim`); the slowest measured plan that meets the target is kept. Up to six
    plans, and where all of them miss, the most-pruned plan and up to three between it and them."""

    if runtime is None:
        raise PlanError("a latency or speedup budget is measured on a runtime: pass runtime='auto', 'torch' or "
                        "'onnxruntime', not None")
    cost = CostModel(dg, groups)
    original = cost.measure({})
    parse_budget(budget, original)  # every key checked before the first (slow) measurement
    before = program.latency_ms(runtime)
    target = float(budget["latency_ms"]) if "latency_ms" in budget else before / float(budget["speedup"])
    rest = {k: v for k, v in budget.items() if k not in ("latency_ms", "speedup")}

    def measure(ratios) -> float:
        return program.plan_latency_ms(make_plan(groups, scores, 0.0, round_to, ratios), runtime)

    if before <= target:
        return _already_fast(dg, groups, scores, rest, round_to, how, max_ratio, cost, measure, (target, before),
                             original, notes)
    steps = list(round_to.values()) if isinstance(round_to, dict) else [round_to]
    cost.latency = LatencyModel(dg, runtime, before, lambda slot: max(steps + [1]),
                                progress=lambda k, n: progress_line(f"latency table: layer {k}/{n}"), groups=groups,
                                where=program.placement(runtime))
    kept = uniform_kept(groups, max_ratio, round_to)  # the most-pruned plan the budget may choose
    smallest = {g.id: (g.size - kept[g.id]) / g.size for g in groups}
    floor = cost.measure(kept)["latency_us"] / 1000
    seen: list[float] = []  # the most-pruned plan's measured time, once measured

    def reachable() -> float:
        """The most-pruned plan measured; the budget is refused when even it misses the target."""
        seen[:] = seen or [measure(smallest)]
        if seen[0] > target:
            asked = f"latency_ms={target:g}" if "latency_ms" in budget else f"speedup={budget['speedup']:g}"
            raise PlanError(f"budget {asked} cannot be met on {runtime}: the model runs in {before:.3f} ms, and "
                            f"removing {max_ratio:.0%} of every selected group still runs in {seen[0]:.3f} ms (the "
                            f"latency table puts {cost.latency.rest:.3f} ms outside the convolutions and linears it "
                            "times). Select more kinds, remove blocks (targets including 'blocks'), or relax the "
                            "budget")
        return seen[0]

    def known() -> list[tuple[float, float]]:
        """(aim, ms) measured outside the trials: the unpruned model, where the table is anchored,
        and the most-pruned plan once measured."""
        return [(before, before)] + [(floor, ms) for ms in seen]

    def solve(a):
        return solve_budget(dg, groups, scores, {**rest, "latency_ms": a}, round_to, how, max_ratio, cost=cost)

    aim = target
    if floor > target:  # the table may be pessimistic (standalone ops, per-run overheads): ask the runtime
        real = reachable()
        # map the target onto the table's scale: a saving measured as (before - real) was estimated as
        # (before - floor)
        aim = before - (before - target) * (before - floor) / max(before - real, 1e-9)
    trials = _trials(solve, measure, aim, target, known(), floor)
    if not any(t[0] <= target for t in trials):  # the table thought it reachable; the runtime decides
        # every plan missed, most of them narrowly: bracket between them and the most-pruned plan
        # rather than jumping to it (a 1.5x budget once came out 8.9x faster that way)
        reachable()
        points = known() + [(a, m) for m, a, _, _ in trials]
        nxt = _next_aim(points, target, bisect=True)
        trials += [] if nxt is None else _trials(solve, measure, max(nxt, floor), target, points, floor, tries=3)
    if not any(t[0] <= target for t in trials):  # only the most-pruned plan is known to meet it
        spent = BudgetResult(dict(trials[-1][3].targets), original, cost.measure(kept), how, max_ratio)
        trials.append((seen[0], floor, smallest, spent))
    ms, aim, ratios, spent = max((t for t in trials if t[0] <= target), key=lambda t: t[0])
    spent.latency = (target, before, ms)
    notes.append(f"latency budget on {runtime}: table of {len(cost.latency.ops)} layer(s) "
                 f"({cost.latency.table.measured} op(s) timed, the rest cached); planned -> measured: " +
                 ", ".join(f"{a:.2f} -> {m:.2f} ms" for m, a, _, _ in trials))
    return ratios, spent


def _already_fast(dg, groups, scores, rest, round_to, how, max_ratio, cost, measure, times, original, notes):
    """The unpruned model meets the latency target: nothing to prune for it; the budget's other
    keys (params, MACs), if any, are solved alone and the plan measured once."""
    target, before = times
    if not rest:
        notes.append(f"latency budget: the model already runs in {before:.3f} ms <= {target:.3f} ms; nothing pruned")
        return {g.id: 0.0 for g in groups}, BudgetResult({}, original, dict(original), how, 0.0,
                                                         (target, before, before))
    ratios, spent = solve_budget(dg, groups, scores, rest, round_to, how, max_ratio, cost=cost)
    spent.latency = (target, before, measure(ratios))
    notes.append(f"latency budget: the model already runs in {before:.3f} ms <= {target:.3f} ms; the other keys "
                 f"({', '.join(rest)}) set the plan, measured at {spent.latency[2]:.3f} ms")
    return ratios, spent


def _trials(solve, measure, aim: float, target: float, anchors: list, floor: float, tries: int = 6) -> list[tuple]:
    """Plans solved on the table at ``aim`` (never below ``floor``, the table's most-pruned plan)
    and measured: [(measured ms, aim, ratios, BudgetResult)]. Stops when one lands in the window
    [0.95 target, target], after ``tries``, or when the next aim (from ``anchors``, (aim, ms)
    points measured before, and the trials: :func:`_next_aim`) is none or one already tried."""
    trials = []
    for _ in range(tries):
        ratios, spent = solve(aim)
        ms = measure(ratios)
        trials.append((ms, aim, ratios, spent))
        if 0.95 * target <= ms <= target:
            break
        tried = anchors + [(a, m) for m, a, _, _ in trials]
        nxt = _next_aim(tried, target, bisect=ms > target)
        if nxt is None:
            break
        aim = max(nxt, floor)
        if any(abs(aim - a) <= 1e-9 * max(abs(a), 1.0) for a, _ in tried):
            break
    return trials


def _next_aim(tried: list[tuple[float, float]], target: float, bisect: bool = False) -> float | None:
    """The table aim whose plan should measure mid-window (0.975 target), from measured (aim, ms)
    points: interpolated between the highest aim that met the target and the lowest that missed,
    kept a tenth of the gap off either end so noisy timings still narrow the bracket, or with
    ``bisect`` (after a miss) halfway between them: where time plateaus just over the target and
    falls off a cliff below it (ResNet-50: 41-42 ms at aims 51-54, 19.5 ms at 40.8, against 40.9)
    interpolation keeps proposing plans on the plateau. Scaled by measured/asked from the one side
    known when nothing brackets it. None when the measurements contradict each other (a higher aim
    met the target where a lower one missed: timing noise)."""
    centre = 0.975 * target
    fit = max(((a, m) for a, m in tried if m <= target), default=None)
    miss = min(((a, m) for a, m in tried if m > target), default=None)
    if fit is None or miss is None:
        a, m = fit or miss
        return a * centre / m
    if miss[0] <= fit[0]:
        return None
    gap = miss[0] - fit[0]
    if bisect:
        return fit[0] + gap / 2
    a = fit[0] + (centre - fit[1]) * gap / max(miss[1] - fit[1], 1e-12)
    return min(max(a, fit[0] + 0.1 * gap), miss[0] - 0.1 * gap)
