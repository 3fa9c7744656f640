"""The one prune pipeline, for any Program (PyTorch or ONNX): plan, oracle, compensate,
report, apply. ``graphprune.prune``, ``prune_onnx``, ``hf.prune`` and the CLI are thin
callers of :func:`plan_program` and :func:`prune_program`."""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from .calib.collect import collect
from .calib.compensate import compensate as run_compensation
from .calib.sites import find_sites
from .errors import PlanError, PruneWarning, RewriteError
from .importance import CRITERIA, ScoreContext, attach_stats, score_groups
from .metrics import count_macs, count_params
from .oracle import run_oracle
from .planning.allocate import allocate_budget, allocate_if_cheap, resolve_allocation
from .planning.budget import MAX_RATIO, BudgetResult, CostModel, key_values, parse_budget, solve_budget, uniform_kept
from .planning.depth import DepthChoice, by_ratio, choose_under_budget, score_blocks, select_blocks, split_targets
from .planning.latency_table import LatencyModel
from .planning.measure import TOLERANCE, alignments, load_profile
from .planning.plan import (
    PrunePlan,
    check_prunable,
    check_ratio,
    idle_note,
    make_plan,
    resolve_ratios,
    select_groups,
    shape_fn,
)
from .report.prune_report import PruneReport
from .util.gc_pause import paused_gc
from .util.progress import progress_line

COMPENSATION_MODES = (None, True, False, "refit", "bias", "sequential")
# What pruning by weight magnitude alone costs, measured (docs/runtime.md, tools/bench_oneshot.py)
NO_DATA = ("ranked by weight magnitude: no calibration data was given. On real pretrained models this costs "
           "much of their accuracy (EfficientNet-Lite0 at 20% fewer MACs kept 3% top-1 agreement with the "
           "original); pass calib= (a few batches of real inputs) to rank from data and repair the layers")
SLOWER = 0.03  # a pruned model this much (and 10 us) slower than the original is reported: timing noise below


def resolve_importance(importance: str, calib, compensate) -> str:
    """``auto``: reconstruction-aware OBS with calibration data (what compensation then
    achieves), activation-weighted without compensation, l2 magnitude without data."""
    if importance != "auto":
        return importance
    if calib is None:
        return "l2"
    return "obs" if compensate is not False else "activation"


def compensation_mode(compensate, calib) -> str | None:
    """The compensation to run: None (off), "refit", "bias" or "sequential"."""
    if compensate not in COMPENSATION_MODES:
        raise PlanError(f"compensate must be True, False, 'refit', 'bias' or 'sequential', not {compensate!r}")
    if compensate is None:
        return "refit" if calib is not None else None
    if compensate is False:
        return None
    if calib is None:
        raise PlanError("compensation needs calibration data: pass calib=[batch, ...] or compensate=False")
    return "refit" if compensate is True else compensate


@dataclass
class Planned:
    """A plan with what made it: the resolved criterion, the calibration batches in the
    program's form, and the score context (its statistics serve compensation)."""

    plan: PrunePlan
    importance: str
    batches: list | None = None
    ctx: object | None = None
    notes: list[str] = field(default_factory=list)
    allocation: object | None = None  # allocate.Allocation where ratios were chosen from data
    budget: object | None = None  # budget.BudgetResult where a budget set the ratios
    depth: object | None = None  # depth_plan.DepthChoice where blocks were targeted
    scores: dict = field(default_factory=dict)  # group id -> per-unit importance (the report's histogram)


def plan_program(program, ratio: float = 0.5, importance: str = "auto", round_to: int = 1,
                 ignore: Iterable[str] = (), roles: Iterable[str] | None = None,
                 ratios: Mapping[int, float] | None = None, targets: Iterable[str] | str | None = None,
                 calib=None, loss_fn=None, compensate: bool | str | None = None, *,
                 allocation: str = "auto", budget=None, max_ratio: float | None = None,
                 runtime: str | None = "auto", tune_widths: bool = True) -> Planned:
    """Select groups, score them with ``importance`` (from ``calib`` where it reads data), and
    drop ``ratio`` of each (``ratios``: overrides by group id, module or parameter name, or
    kind). ``allocation="sensitivity"`` (the default with ``calib``) spends the uniform plan's
    parameter budget unevenly, where the measured output error is least (graphprune/planning/allocate.py);
    ``budget`` replaces ``ratio`` with a MACs / parameter / latency target (graphprune/planning/budget.py).
    ``round_to="auto"`` keeps each channel group at the width multiples ``runtime``'s kernels
    favour on this machine (measured once: graphprune/planning/measure.py)."""
    check_ratio(ratio)
    check_round_to(round_to)
    runtime = resolve_runtime(runtime, program)
    name = resolve_importance(importance, calib, compensate)
    how = resolve_allocation(allocation, calib, ratios)
    sensitive_budget = False
    if budget is not None or how == "global":
        if ratios:
            raise PlanError("ratios= fixes each group's ratio, a budget chooses them: pass one of the two")
        # allocation="sensitivity" under a budget: measured per-group curves (allocate_budget)
        sensitive_budget = budget is not None and allocation == "sensitivity"
        how = "global" if how == "global" else "uniform"
    mode = compensation_mode(compensate, calib)
    dg = program.graph()
    want_blocks, targets = split_targets(targets)
    groups = select_groups(dg, roles, ignore, targets) if targets != () else []
    blocks = select_blocks(dg, ignore) if want_blocks else []
    if blocks and calib is None:
        raise PlanError("depth pruning scores each block by the output error its removal causes on data: pass "
                        "calib=[batch, ...] with targets including 'blocks'")
    if blocks and budget is not None and {"latency_ms", "speedup"} & set(key_values(budget) if isinstance(budget, str)
                                                                       else budget):
        raise PlanError("a latency budget searches widths by measuring; it does not remove blocks yet: use a macs= "
                        "or params= budget with targets including 'blocks'")
    notes: list[str] = []
    auto = round_to == "auto"
    if auto:
        round_to = auto_rounding(dg, groups, runtime, notes)
    ratios = dict(ratios or {})
    block_ratio = ratios.pop("blocks", None)
    if block_ratio is not None:
        check_ratio(block_ratio, "ratio for 'blocks'")
    ratios = resolve_ratios(groups, ratios)  # names and kinds -> group ids
    crit = CRITERIA.get(name)
    if crit is not None and crit.needs == "grad" and not program.has_gradients:
        raise PlanError(f"importance '{name}' needs gradients, which an {program.framework} model does not give; "
                        "use obs, activation or fluctuation with calib=, or a weight criterion")
    batches = program.batches(calib) if calib is not None else None
    ctx = ScoreContext(dg, program.tensors())
    ctx.notes.extend(notes)
    if calib is None and importance == "auto" and groups:
        ctx.notes.append(NO_DATA)
    if crit is not None and batches is not None and crit.needs == "grad":
        ctx.grads = program.gradients(batches, loss_fn)
    elif crit is not None and batches is not None and crit.needs == "calib":

        attach_stats(ctx, groups, name, lambda sites, gram: collect(program, batches, sites, gram))
    scores = score_groups(name, ctx, groups)
    alloc = spent = depth = None
    loss = trial_loss(program, loss_fn) if blocks else None
    bscores = score_blocks(program, blocks, batches, loss) if blocks else {}
    if blocks and budget is not None:
        if isinstance(budget, str):
            budget = key_values(budget)
        ratios, spent, depth = choose_under_budget(program, dg, groups, scores, blocks, bscores, budget, round_to,
                                                   how, MAX_RATIO if max_ratio is None else max_ratio, batches,
                                                   mode, ctx.stats, loss)
    elif blocks:
        depth = DepthChoice(by_ratio(blocks, bscores, ratio if block_ratio is None else block_ratio), bscores,
                            measure="calibration loss" if loss is not None else "relative output error")
    if depth is not None:
        ctx.notes.append(depth.note())
    if spent is not None:
        pass  # the budget was spent above, on blocks and widths together
    elif (budget is not None or how == "global") and groups:
        if budget is None:  # global allocation of the uniform plan's parameter budget
            uniform = make_plan(groups, scores, ratio, round_to)
            budget = {"params": count_params(dg.ir, shape_fn(dg, uniform))}
        maxr = MAX_RATIO if max_ratio is None else max_ratio
        if isinstance(budget, str):
            budget = key_values(budget)
        if "latency_ms" in budget or "speedup" in budget:
            ratios, spent = _latency_budget(program, runtime, dg, groups, scores, budget, round_to, how, maxr,
                                            ctx.notes)
        else:
            ratios, spent = solve_budget(dg, groups, scores, budget, round_to, how, maxr)
            if sensitive_budget and batches is not None:

                cost = CostModel(dg, groups)
                measured = allocate_budget(program, cost, groups, scores, spent.targets, round_to, batches, maxr,
                                           ctx.notes)
                if measured is not None:
                    ratios = measured
                    plan_ = make_plan(groups, scores, ratio, round_to, ratios)
                    spent.allocation = "sensitivity"
                    spent.achieved = cost.measure({g.id: g.size - len(plan_.pruned[g.id]) for g in groups})
    elif how == "sensitivity" and ratio > 0 and groups:
        alloc = allocate_if_cheap(program, groups, scores, ratio, round_to, batches, mode, ctx.stats,
                                  forced=allocation == "sensitivity", notes=ctx.notes)
        ratios = alloc.ratios if alloc is not None else ratios
    plan = make_plan(groups, scores, ratio, round_to, ratios)
    if (auto and tune_widths and isinstance(round_to, dict) and not blocks
            and not (spent is not None and spent.allocation == "sensitivity")  # measured ratios: keep them
            and not (budget is not None and {"latency_ms", "speedup"} & set(budget))):
        maxr = MAX_RATIO if max_ratio is None else max_ratio

        def remake(steps):
            if spent is None:
                return make_plan(groups, scores, ratio, steps, ratios), spent
            r, got = solve_budget(dg, groups, scores, budget, steps, how, maxr)
            return make_plan(groups, scores, ratio, steps, r), got

        plan, spent = fastest_alignment(program, runtime, round_to, remake, (plan, spent), ctx.notes)
    if depth is not None:
        plan.blocks = list(depth.removed)
    # a budget says itself what it achieved; the ratio it replaced is no measure of idleness
    idle = idle_note(groups, plan, ratio, alloc is not None, dg) if spent is None and not blocks else None
    if idle:
        warnings.warn(idle, PruneWarning, stacklevel=3)
        ctx.notes.append(idle)
    return Planned(plan, name, batches, ctx, list(ctx.notes), alloc, spent, depth, dict(scores))


def check_round_to(round_to) -> None:
    ok = round_to == "auto" or (isinstance(round_to, int) and not isinstance(round_to, bool) and round_to >= 1)
    if not ok:
        raise PlanError(f"round_to must be 'auto' (the widths the runtime's kernels favour, measured) or a whole "
                        f"number >= 1 (1: any width), not {round_to!r}")


def resolve_runtime(runtime: str | None, program) -> str | None:
    """The runtime a prune targets: ``"auto"`` is the program's own (onnxruntime for an ONNX model,
    torch eager for a PyTorch one); None measures nothing."""
    if runtime is None:
        return None
    if runtime == "auto":
        return program.runtimes[0] if program.runtimes else None
    if runtime not in program.runtimes:
        raise PlanError(f"runtime {runtime!r} is not one a {program.framework} model is measured on; choose one of "
                        f"{list(program.runtimes)}, 'auto' or None")
    return runtime


def auto_rounding(dg, groups, runtime: str | None, notes: list[str]):
    """round_to="auto": each channel group's measured alignment on ``runtime`` (1 without one)."""
    if runtime is None or not any(g.role == "channel" for g in groups):
        return 1

    profile = load_profile(runtime)
    steps = alignments(dg, groups, profile)
    used = sorted({a for a in steps.values() if a > 1})
    if not used:
        notes.append(f"widths: any channel count runs at full speed on {runtime} here (measured profile)")
        return 1
    kinds = ", ".join(f"{k} x{a}" for k, a in sorted(profile.align.items()) if a > 1)
    notes.append(f"widths: channel counts kept at multiples the {runtime} kernels favour on this machine ({kinds}; "
                 "measured profile; round_to=1 allows any width)")
    return steps


def fastest_alignment(program, runtime: str, steps: dict[int, int], remake, first, notes: list[str]):
    """The profile times blocks alone; across a whole network a coarser multiple can run faster
    still (a blocked layout kept from layer to layer instead of converted back and forth), so
    the plan is also made with the profile's steps doubled and quadrupled (up to 32) and each is
    timed on ``runtime``: the fastest is kept, the finer within 3% (finer keeps more choice)."""
    trials: list[tuple[float, int, tuple]] = []
    seen = []
    for factor in (1, 2, 4):
        scaled = {g: min(32, s * factor) if s > 1 else s for g, s in steps.items()}
        if scaled in seen:
            continue
        seen.append(scaled)
        made = first if factor == 1 else remake(scaled)
        trials.append((program.apply(made[0]).latency_ms(runtime), max(scaled.values()), made))
    best = min(t[0] for t in trials)
    ms, step, made = next(t for t in trials if t[0] <= best * (1 + TOLERANCE))
    notes.append(f"widths: tried the measured multiples scaled x1/x2/x4 on {runtime}: " +
                 ", ".join(f"up to {s}: {t:.3f} ms" for t, s, _ in trials) + f"; kept up to {step}")
    return made


def trial_loss(program, loss_fn):
    """The loss that weighs depth against width where the model has one (a causal LM's next-token
    loss, ``graphprune.hf`` passes it): perplexity on calibration text, not logits' squared error,
    is what users judge an LLM by. ``loss_fn`` must say it takes a tuple of output tensors
    (``loss_fn.accepts_tensors = True``), as the masked runs give no model output object."""
    if loss_fn is None or not getattr(loss_fn, "accepts_tensors", False) or program.framework != "PyTorch":
        return None
    import torch

    def loss(outs, batch) -> float:
        args, kwargs = batch
        return float(loss_fn(tuple(torch.from_numpy(o) for o in outs), kwargs if kwargs else args))

    return loss


def _latency_budget(program, runtime, dg, groups, scores, budget, round_to, how, max_ratio, notes):
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
                                progress=lambda k, n: progress_line(f"latency table: layer {k}/{n}"))

    def measure(ratios) -> float:
        return program.apply(make_plan(groups, scores, 0.0, round_to, ratios)).latency_ms(runtime)

    smallest = uniform_kept(groups, max_ratio, round_to)
    floor = cost.measure(smallest)["latency_us"] / 1000
    aim = target
    if floor > target:  # the table may be pessimistic (standalone ops, per-run overheads): ask the runtime
        real = measure({g.id: (g.size - smallest[g.id]) / g.size for g in groups})
        if real > target:
            asked = f"latency_ms={target:g}" if "latency_ms" in budget else f"speedup={budget['speedup']:g}"
            raise PlanError(f"budget {asked} cannot be met on {runtime}: the model runs in {before:.3f} ms, and "
                            f"removing {max_ratio:.0%} of every selected group still runs in {real:.3f} ms (the "
                            f"latency table puts {cost.latency.rest:.3f} ms outside the convolutions and linears it "
                            "times). Select more kinds, remove blocks (targets including 'blocks'), or relax the "
                            "budget")
        # map the target onto the table's scale: a saving measured as (before - real) was estimated as
        # (before - floor)
        aim = before - (before - target) * (before - floor) / max(before - real, 1e-9)
    trials, fit, miss = [], 0.0, math.inf  # aims whose plans met / missed the target
    for _ in range(4):
        ratios, spent = solve_budget(dg, groups, scores, {**rest, "latency_ms": max(aim, floor)}, round_to, how,
                                     max_ratio, cost=cost)
        ms = measure(ratios)
        trials.append((ms, aim, ratios, spent))
        if 0.95 * target <= ms <= target:
            break
        fit, miss = (max(fit, aim), miss) if ms <= target else (fit, min(miss, aim))
        aim = aim * target / ms  # the table's error at this size, taken out of the next target
        if not fit < aim < miss:  # the correction overshot what earlier plans showed: bisect instead
            aim = (fit + miss) / 2 if miss < math.inf else aim
    fits = [t for t in trials if t[0] <= target]
    ms, aim, ratios, spent = max(fits, key=lambda t: t[0]) if fits else min(trials, key=lambda t: t[0])
    spent.latency = (target, before, ms)
    notes.append(f"latency budget on {runtime}: table of {len(cost.latency.ops)} layer(s) "
                 f"({cost.latency.table.measured} op(s) timed, the rest cached); planned -> measured: " +
                 ", ".join(f"{a:.2f} -> {m:.2f} ms" for m, a, _, _ in trials))
    if not fits:
        notes.append(f"latency budget not met: the closest plan runs in {ms:.3f} ms (target {target:.3f} ms)")
    return ratios, spent


@paused_gc
def prune_program(program, ratio: float = 0.5, importance: str = "auto", round_to: int = 1,
                  ignore: Iterable[str] = (), roles: Iterable[str] | None = None,
                  ratios: Mapping[int, float] | None = None, targets: Iterable[str] | str | None = None,
                  calib=None, loss_fn=None, compensate: bool | str | None = None, add_bias: bool = False,
                  plan_: PrunePlan | None = None, verify: bool = False, atol: float | None = None,
                  measure_latency: bool = True, inplace: bool = False, *, allocation: str = "auto", budget=None,
                  max_ratio: float | None = None, runtime: str | None = "auto"):
    """Plan (or take ``plan_``), hold the plan to the oracle (``verify``), compensate, apply;
    returns ``(pruned program, PruneReport)``. A failing oracle raises: no wrong model is
    returned. The oracle checks the plan without compensation, which changes weights on
    purpose; the report lists each refit layer with its calibration error before/after. The
    model's latency on ``runtime`` is measured before and after (``measure_latency``); a pruned
    model that runs slower says so in a PruneWarning and in the report."""
    t0 = time.perf_counter()
    check_ratio(ratio)
    runtime = resolve_runtime(runtime, program)
    mode = compensation_mode(compensate, calib)
    dg = program.graph()
    if plan_ is None:
        if ratio > 0 or budget is not None:
            check_prunable(dg)
        planned = plan_program(program, ratio, importance, round_to, ignore, roles, ratios, targets, calib,
                               loss_fn, compensate, allocation=allocation, budget=budget, max_ratio=max_ratio,
                               runtime=runtime, tune_widths=measure_latency)
    else:
        for gid, size in plan_.sizes.items():
            if gid not in dg._by_atom or dg.group(gid).size != size:
                raise PlanError(f"the plan does not fit this model: group {gid} (size {size}) is not in its graph")
        planned = Planned(plan_, "given plan")
    p = planned.plan
    oracle = None
    if verify:

        oracle = run_oracle(program, p, atol)
    if oracle is not None and not oracle.passed:
        raise RewriteError(f"{oracle}; the model was not changed and nothing was written")
    comp = None
    if mode is not None and not p.empty:

        batches = planned.batches if planned.batches is not None else program.batches(calib)
        add = program.bias_free(find_sites(dg)) if add_bias else set()
        stats = planned.ctx.stats if planned.ctx is not None else None
        comp = run_compensation(program, dg, p, batches, mode, add, stats)
    after = shape_fn(dg, p)
    report = PruneReport(count_params(dg.ir), count_params(dg.ir, after), count_macs(dg.ir), count_macs(dg.ir, after),
                         {gid: (size - len(p.pruned.get(gid, [])), size) for gid, size in p.sizes.items()}, p, oracle,
                         importance=planned.importance, compensation=comp, notes=planned.notes,
                         allocation=planned.allocation, budget=planned.budget,
                         layers=[(v.source or v.name, tuple(v.shape), after(v.name)) for v in dg.ir.params()
                                 if v.kind == "param" and v.rank >= 2],
                         path=getattr(program, "path", ""),
                         blocks=((len(p.blocks), len(planned.depth.scores)) if planned.depth is not None else
                                 (len(p.blocks), len(dg.blocks)) if p.blocks else None), depth=planned.depth,
                         scores=planned.scores, kinds={g: dg.group(g).kind or "channel" for g in p.sizes})
    before = program.latency_ms(runtime) if measure_latency and runtime is not None and not p.empty else None
    pruned = program.apply(p, comp.updates if comp is not None else None, comp, inplace=inplace)
    report.params_after += pruned.added_params()
    if before is not None:
        after = pruned.latency_ms(runtime)
        for _ in range(2):  # a busy spell inflates one measurement, rarely the best of three
            if after <= before * (1 + SLOWER) + 0.01:
                break
            after = min(after, pruned.latency_ms(runtime))
        report.runtime, report.latency_before_ms, report.latency_after_ms = runtime, before, after
        if after > before * (1 + SLOWER) + 0.01:
            slow = (f"the pruned model runs slower than the original on {runtime}: {report.latency_after_ms:.3f} ms "
                    f"vs {before:.3f} ms at the example inputs' shapes. Use round_to='auto' (the runtime's measured "
                    "widths) or a larger round_to, or prune whole blocks or heads")
            warnings.warn(slow, PruneWarning, stacklevel=3)
            report.notes.append(slow)
    report.seconds = time.perf_counter() - t0
    return pruned, report
