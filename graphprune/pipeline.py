"""The one prune pipeline, for any Program (PyTorch or ONNX): plan, oracle, compensate,
report, apply. ``graphprune.prune``, ``prune_onnx``, ``hf.prune`` and the CLI are thin
callers of :func:`plan_program` and :func:`prune_program`, each passing one PruneOptions."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from .calib.collect import calib_batches, collect
from .calib.compensate import ridge_by_node
from .calib.distributed import same_on_all
from .calib.final_repair import final_repair
from .calib.sites import find_sites
from .calib.stats import gram_sites, refittable
from .errors import BudgetWarning, PlanError, RewriteError, warn
from .graph import DependencyGraph, Group
from .importance import CRITERIA, ScoreContext, attach_stats, score_groups
from .metrics import count_params
from .options import PruneOptions, compensation_mode, resolve_importance
from .oracle import run_oracle
from .planning.allocate import Allocation, Repair, allocate_if_cheap, resolve_allocation
from .planning.budget import BudgetResult, CostModel, check_selected, missed, solve_budget
from .planning.budget_sensitivity import BudgetCurves, allocate_budget, budget_rows
from .planning.cliffs import cap_ratios, plan_floors, with_floors
from .planning.depth import (
    DepthChoice,
    by_ratio,
    choose_under_budget,
    keep_removable,
    score_blocks,
    select_blocks,
    split_targets,
    trial_loss,
)
from .planning.kinds import KindChoice, choose_kinds
from .planning.latency_budget import solve_latency_budget
from .planning.measure import load_profile, pinned
from .planning.memory import MemoryEstimate, check_memory, estimate_memory, peak_rss, reset_peak, stat_sites
from .planning.plan import (
    PrunePlan,
    check_prunable,
    check_ratio,
    check_uniform,
    idle_note,
    make_plan,
    shape_fn,
)
from .planning.targets import resolve_ratios, select_groups
from .planning.time_tilt import tilt_options
from .planning.unreached import replanned
from .planning.widths import auto_rounding, fastest_alignment, resolve_runtime
from .report.after import latency_after
from .report.build import build_report
from .report.prune_report import MemoryUsage
from .util.gc_pause import paused_gc

# What pruning by weight magnitude alone costs, measured (docs/runtime.md, tools/bench_oneshot.py)
NO_DATA = ("ranked by weight magnitude: no calibration data was given. On real pretrained models this costs "
           "much of their accuracy (EfficientNet-Lite0 at 20% fewer MACs kept 3% top-1 agreement with the "
           "original); pass calib= (a few batches of real inputs) to rank from data and repair the layers")


OBS_AUTO_MAX = 4096  # the default call's OBS scores groups whose consumers have at most this many inputs


@dataclass
class Planned:
    """A plan with what made it: the resolved criterion, the calibration batches in the
    program's form, and the score context (its statistics serve compensation)."""

    plan: PrunePlan
    importance: str
    batches: list | None = None
    ctx: ScoreContext | None = None
    notes: list[str] = field(default_factory=list)
    allocation: Allocation | None = None  # where ratios were chosen from data
    budget: BudgetResult | None = None  # where a budget set the ratios
    depth: DepthChoice | None = None  # where blocks were targeted
    scores: dict = field(default_factory=dict)  # group id -> per-unit importance (the report's histogram)
    memory: MemoryEstimate | None = None  # the peak estimated before calibration


@dataclass
class _Work:
    """What planning has decided so far; each step of :func:`plan_program` fills some of it."""

    program: object
    opts: PruneOptions
    dg: DependencyGraph
    runtime: str | None
    how: str  # the allocation: uniform, sensitivity or global
    groups: list[Group]
    blocks: list
    round_to: int | dict
    block_ratio: float | None = None
    ratios: dict | None = None
    name: str = ""
    batches: list | None = None
    ctx: ScoreContext | None = None
    scores: dict = field(default_factory=dict)
    alloc: Allocation | None = None
    spent: BudgetResult | None = None
    depth: DepthChoice | None = None
    budget: dict | None = None
    notes: list[str] = field(default_factory=list)
    memory: MemoryEstimate | None = None
    tilts: list | None = None  # a MACs budget's uniform ratio bent per group towards time: the options, timed
    # with each width multiple (planning/time_tilt.py, widths.py)
    curves: BudgetCurves | None = None  # a budget's measured sensitivity, re-spent per width multiple
    kinds: KindChoice | None = None  # heads kept or cut, measured (planning/kinds.py)
    floors: dict = field(default_factory=dict)  # group id -> least kept count: a kernel cliff below (cliffs.py)


def plan_program(program, opts: PruneOptions) -> Planned:
    """Select groups, score them with ``opts.importance`` (from ``opts.calib`` where it reads
    data), and choose how much of each goes: ``ratio`` everywhere, per-group ``ratios``, the
    measured sensitivity allocation (graphprune/planning/allocate.py), or a budget
    (graphprune/planning/budget.py, latency_budget.py). With ``round_to="auto"`` each channel
    group keeps the width multiples the runtime's kernels favour (graphprune/planning/widths.py)."""
    w = _select(program, opts)
    _score(w)
    given = set(w.ratios or ())  # a user's own ratios= stand; floors bound the rest
    if _widths_tuned(w) and (opts.ratio > 0 or w.budget is not None):
        w.floors = plan_floors(program, w.runtime, w.dg, w.groups, w.round_to, opts.uniform, w.ctx.notes)
    _choose_ratios(w)
    if w.spent is None and w.floors:
        w.ratios = cap_ratios(w.groups, opts.ratio, w.ratios, w.floors, given)
    plan = make_plan(w.groups, w.scores, opts.ratio, w.round_to, w.ratios)
    plan = _tune_widths(w, plan)
    if w.depth is not None:
        plan.blocks = list(w.depth.removed)
    if opts.uniform:
        check_uniform(w.groups, plan)
    # blocks alone: planning/depth.py says it; no budget given (a global ranking's own scalar): nothing was asked
    short = missed(w.spent, w.round_to, opts.uniform) if opts.budget and not (w.blocks and not w.groups) else ""
    if short:
        warn(short, BudgetWarning)
        w.ctx.notes.append(short)
    # a budget says itself what it achieved; the ratio it replaced is no measure of idleness
    on_purpose = w.alloc is not None or bool(w.kinds and w.kinds.chosen) or (  # kept whole by a measured choice
        bool(w.floors) and all(g.id in w.floors for g in w.groups if not plan.pruned.get(g.id)))
    idle = idle_note(w.groups, plan, opts.ratio, on_purpose, w.dg, w.round_to) if w.spent is None and not w.blocks else None
    if idle and (opts.targets is not None or idle.startswith("nothing")):  # the default kinds: a note when some go
        warn(idle)
    w.ctx.notes += [idle] if idle else []
    return Planned(plan, w.name, w.batches, w.ctx, list(w.ctx.notes), w.alloc, w.spent, w.depth, dict(w.scores),
                   w.memory)


def _select(program, opts: PruneOptions) -> _Work:
    """The groups and blocks to prune, the allocation, the runtime and the width steps."""
    runtime = resolve_runtime(opts.runtime, program)
    how = "uniform" if opts.uniform else resolve_allocation(opts.allocation, opts.calib, opts.ratios)
    if opts.budget is not None or how == "global":
        if opts.ratios:
            raise PlanError("ratios= fixes each group's ratio, a budget chooses them: pass one of the two")
        how = "global" if how == "global" else "uniform"
    dg = program.graph()
    want_blocks, targets = split_targets(opts.targets)
    groups = select_groups(dg, opts.roles, opts.ignore, targets) if targets != () else []
    blocks = select_blocks(dg, opts.ignore) if want_blocks else []
    if opts.budget is not None and not groups and not blocks:
        check_selected(dg, opts.budget)
    if blocks and opts.calib is None:
        raise PlanError("depth pruning scores each block by the output error its removal causes on data: pass "
                        "calib=[batch, ...] with targets including 'blocks'")
    if blocks and opts.latency_budget:
        raise PlanError("a latency budget searches widths by measuring; it does not remove blocks yet: use a macs= "
                        "or params= budget with targets including 'blocks'")
    notes: list[str] = []
    blocks = keep_removable(program, dg, blocks, not groups, notes)
    round_to = auto_rounding(dg, groups, runtime, notes, program.placement(runtime)) if opts.round_to == "auto" \
        else opts.round_to
    round_to = same_on_all(round_to)  # measured per machine: across processes, rank 0's
    w = _Work(program, opts, dg, runtime, how, groups, blocks, round_to, notes=notes,
              budget=dict(opts.budget) if opts.budget is not None else None)
    ratios = dict(opts.ratios or {})
    w.block_ratio = ratios.pop("blocks", None)
    if w.block_ratio is not None:
        check_ratio(w.block_ratio, "ratio for 'blocks'")
    w.ratios = resolve_ratios(groups, ratios)  # names and kinds -> group ids
    return w


def _score(w: _Work) -> None:
    """Calibrate where the criterion reads data or gradients, then score every selected group."""
    opts, program = w.opts, w.program
    w.name = resolve_importance(opts)
    crit = CRITERIA.get(w.name)
    if crit is not None and crit.needs == "grad" and not program.has_gradients:
        raise PlanError(f"importance '{w.name}' needs gradients, which an {program.framework} model does not give; "
                        "use obs, activation or fluctuation with calib=, or a weight criterion")
    w.batches = calib_batches(program, opts.calib, opts.calib_tokens) if opts.calib is not None else None
    w.memory = prune_memory(w.dg, w.groups, opts, w.batches, w.name)
    if opts.calib is not None or opts.max_memory is not None:  # without data: the weights and their rewrite
        check_memory(w.memory, opts.max_memory)
    w.ctx = ScoreContext(w.dg, program.tensors())
    if opts.importance == "auto" and w.budget is None and w.how != "global":  # scores compared within groups only
        w.ctx.obs_max_features = OBS_AUTO_MAX
    w.ctx.notes.extend(w.notes)
    if opts.calib is None and opts.importance == "auto" and w.groups:
        w.ctx.notes.append(NO_DATA)
    if crit is not None and w.batches is not None and crit.needs == "grad":
        w.ctx.grads = program.gradients(w.batches, opts.loss_fn)
    elif crit is not None and w.batches is not None and crit.needs == "calib":
        attach_stats(w.ctx, w.groups, w.name, lambda sites, gram: collect(program, w.batches, sites, gram))
    w.scores = score_groups(w.name, w.ctx, w.groups)


def prune_memory(dg, groups: list, opts: PruneOptions, batches, name: str) -> MemoryEstimate:
    """The prune's peak memory estimated from the IR (planning/memory.py): the sites calibration
    reads, with Grams where OBS (within its budget) or compensation keeps them. ``name``: the
    resolved criterion; ``batches``: the calibration batches (None: no data)."""
    crit = CRITERIA.get(name)
    mode, calib = compensation_mode(opts), crit is not None and crit.needs == "calib"
    sites = stat_sites(dg, groups) if batches is not None and (calib or mode is not None) else []
    grams = {s.node for s in sites if refittable(s)} if mode is not None else set()
    if calib and name == "obs":
        grams |= gram_sites(dg, sites, [])
    grad = crit is not None and crit.needs == "grad" and batches is not None
    return estimate_memory(dg.ir, sites, grams, batches, obs=name == "obs", refit=mode is not None, backward=grad,
                           check=opts.heldout_check)


def _choose_ratios(w: _Work) -> None:
    """Each group's ratio: blocks against widths under a budget, a budget alone, the measured
    sensitivity allocation, or ``opts.ratio`` (with ``ratios`` overrides) as given."""
    opts, program = w.opts, w.program
    mode = compensation_mode(opts)
    loss = trial_loss(program, opts.loss_fn) if w.blocks else None
    bscores = score_blocks(program, w.blocks, w.batches, loss) if w.blocks else {}
    if w.blocks and w.budget is not None:
        w.ratios, w.spent, w.depth = choose_under_budget(program, w.dg, w.groups, w.scores, w.blocks, bscores,
                                                         w.budget, w.round_to, w.how, opts.max_ratio, w.batches,
                                                         mode, w.ctx.stats, loss)
    elif w.blocks:
        w.depth = DepthChoice(by_ratio(w.blocks, bscores, opts.ratio if w.block_ratio is None else w.block_ratio),
                              bscores, measure="calibration loss" if loss is not None else "relative output error")
    if w.depth is not None:
        w.ctx.notes.append(w.depth.note())
    if w.spent is not None:
        return  # the budget was spent above, on blocks and widths together
    if (w.budget is not None or w.how == "global") and w.groups:
        _spend_budget(w)
    elif w.how == "sensitivity" and opts.ratio > 0 and w.groups:
        w.alloc = allocate_if_cheap(program, w.groups, w.scores, opts.ratio, w.round_to, w.batches, mode,
                                    w.ctx.stats, forced=opts.allocation == "sensitivity", notes=w.ctx.notes,
                                    lams=ridge_by_node(w.dg, opts.ridge, find_sites(w.dg)))
        w.ratios = w.alloc.ratios if w.alloc is not None else w.ratios
    if w.alloc is None and w.budget is None and not w.blocks and opts.allocation == "auto" and w.batches \
            and not opts.ratios and opts.ratio > 0 and w.how != "global":  # heads or not, measured (kinds.py)
        ratios, w.kinds = choose_kinds(program, w.dg, w.groups, w.scores, opts.ratio, w.round_to, w.batches, mode,
                                       w.ctx.stats, ridge_by_node(w.dg, opts.ridge, find_sites(w.dg)),
                                       trial_loss(program, opts.loss_fn), opts.max_ratio, w.ctx.notes)
        w.ratios = ratios or w.ratios
        w.ctx.notes.extend([w.kinds.note()] if w.kinds else [])


def _spend_budget(w: _Work) -> None:
    """A MACs / parameter / latency budget (global allocation without one spends the uniform
    plan's parameter count), then re-spent by held-out error curves where budget_rows says so."""
    opts = w.opts
    if w.budget is None:
        uniform = make_plan(w.groups, w.scores, opts.ratio, w.round_to)
        w.budget = {"params": count_params(w.dg.ir, shape_fn(w.dg, uniform))}
    if "latency_ms" in w.budget or "speedup" in w.budget:
        w.ratios, w.spent = solve_latency_budget(w.program, w.runtime, w.dg, w.groups, w.scores, w.budget,
                                                 w.round_to, w.how, opts.max_ratio, w.ctx.notes)
        w.ratios, w.spent = same_on_all((w.ratios, w.spent))  # timed: across processes, rank 0's
        return
    mode = compensation_mode(opts)  # measured sensitivity re-spends the budget: no time tilt first
    rows = w.batches and budget_rows(opts, mode, w.program, w.dg, w.groups, w.budget, w.batches, w.ctx.notes)
    _solve_uniform(w, tilt=not rows)
    if not rows:
        return
    cost = CostModel(w.dg, w.groups)
    repair = None if mode is None else Repair(w.program, w.dg, make_plan(w.groups, w.scores, opts.ratio, w.round_to,
                                                                          w.ratios), w.batches, mode, w.ctx.stats,
                                              ridge_by_node(w.dg, opts.ridge, find_sites(w.dg)))
    measured = allocate_budget(w.program, cost, w.groups, w.scores, w.spent.targets, w.round_to, w.batches,
                               opts.max_ratio, w.ctx.notes, repair, rows, w.floors)
    if measured is None:  # the measured levels cannot meet the budget together: uniform, as without them
        return _solve_uniform(w, tilt=True)
    w.ratios, w.curves = measured
    plan = make_plan(w.groups, w.scores, opts.ratio, w.round_to, w.ratios)
    w.spent.allocation = "sensitivity"
    w.spent.achieved = cost.measure({g.id: g.size - len(plan.pruned[g.id]) for g in w.groups})


def _solve_uniform(w: _Work, tilt: bool) -> None:
    """The budget solved by one ratio (or a global ranking); where widths are tuned, the tilts towards
    time that the width tuning times with each multiple."""
    if tilt and w.how == "uniform" and _widths_tuned(w):
        w.tilts = tilt_options(w.program, w.runtime, w.dg, w.groups, w.budget, w.round_to, w.ctx.notes)
    (w.ratios, w.spent), w.floors = with_floors(lambda floors: solve_budget(
        w.dg, w.groups, w.scores, w.budget, w.round_to, w.how, w.opts.max_ratio, lockstep=w.opts.uniform,
        floors=floors), w.floors, w.ctx.notes)


def _tune_widths(w: _Work, plan: PrunePlan) -> PrunePlan:
    """round_to="auto": time the plan at the measured multiples scaled x1/x2/x4 (each with the
    budget's tilts towards time where it has them), keep the fastest (not where blocks or a latency
    search already fixed the plan). A budget's measured allocation is re-spent from its curves at
    each multiple, not measured again."""
    opts = w.opts
    if not _widths_tuned(w):
        return plan
    spent = w.spent

    def remake(steps, tilt):
        if spent is None:
            return make_plan(w.groups, w.scores, opts.ratio, steps, w.ratios), spent
        if w.curves is not None:
            r = w.curves.solve(steps)
            if r is None:
                return None
            made = make_plan(w.groups, w.scores, opts.ratio, steps, r)
            return made, replace(spent, achieved=w.curves.cost.measure(
                {g.id: g.size - len(made.pruned[g.id]) for g in w.groups}))
        r, got = solve_budget(w.dg, w.groups, w.scores, w.budget, steps, w.how, opts.max_ratio, tilt=tilt,
                              lockstep=opts.uniform, floors=w.floors)
        return make_plan(w.groups, w.scores, opts.ratio, steps, r), got

    tilts = w.tilts if w.curves is None else None
    # cached; with floors no pin gives the same plan untimed (a pinned profile times nothing, so finds no cliff)
    align = load_profile(w.runtime, where=w.program.placement(w.runtime)).align if w.curves is None and not w.floors \
        else None
    kept: dict = {}  # the kept plan's steps: the notes after this cite them
    made = fastest_alignment(w.program, w.runtime, w.round_to, remake, (plan, spent), w.ctx.notes, tilts, align, kept)
    (plan, w.spent), kept = same_on_all((made, kept))  # timed: across processes, rank 0's
    w.round_to = kept or w.round_to
    return plan


def _widths_tuned(w: _Work) -> bool:
    """The runtime's widths are in play (round_to="auto", measured, no blocks, no latency search)."""
    opts = w.opts
    return (opts.round_to == "auto" and opts.measure_latency and isinstance(w.round_to, dict) and not w.blocks
            and not opts.latency_budget and pinned(w.runtime) is None)  # pinned widths: the same on any machine


@paused_gc
def prune_program(program, opts: PruneOptions, plan_: PrunePlan | None = None, inplace: bool = False):
    """Plan (or take ``plan_``), hold the plan to the oracle (``opts.verify``), compensate, apply;
    returns ``(pruned program, PruneReport)``. A failing oracle raises: no wrong model is
    returned. The oracle checks the plan without compensation, which changes weights on
    purpose; the report lists each refit layer with its calibration error before/after. The
    model's latency on the runtime is measured before and after (``opts.measure_latency``); a
    pruned model that runs slower says so in a PruneWarning and in the report. Groups whose sizes
    the pruned forward spells where no rewrite reaches are frozen and the plan made again
    (planning/unreached.py); a given plan is not changed."""
    return replanned(lambda: _prune_once(program, opts, plan_, inplace), program.graph(), plan_ is not None)


def _prune_once(program, opts: PruneOptions, plan_: PrunePlan | None, inplace: bool):
    t0 = time.perf_counter()
    rss0, reset = reset_peak()
    runtime = resolve_runtime(opts.runtime, program)
    dg = program.graph()
    if plan_ is None:
        # removing whole blocks slices no channel: a model whose every channel is frozen (int8 weights) may
        # still lose blocks where they are asked for
        if (opts.ratio > 0 or opts.budget is not None) and not (split_targets(opts.targets)[0] and dg.blocks):
            check_prunable(dg)
        planned = plan_program(program, opts)
    else:
        dg.check_plan(plan_)
        planned = Planned(plan_, "given plan")
    p = planned.plan
    oracle = run_oracle(program, p, opts.atol) if opts.verify else None
    if oracle is not None and not oracle.passed:
        if oracle.moved is not None:  # explained: planning/unreached.py keeps those groups whole and plans again
            raise oracle.moved
        raise RewriteError(f"{oracle}; the model was not changed and nothing was written")
    comp = final_repair(program, dg, opts, planned)
    report = build_report(program, dg, planned, oracle, comp)
    timed = opts.measure_latency and runtime is not None and (not p.empty or program.rewritten)
    before = program.latency_ms(runtime) if timed else None
    # groups the oracle could not run (inexact) are held to the plan's shapes by a second trace at least
    pruned = program.apply(p, comp.updates if comp is not None else None, comp, inplace=inplace,
                           proof=bool(oracle is not None and oracle.inexact_groups), values=True)
    report.params_after += pruned.added_params()
    if before is not None:
        latency_after(pruned, program, runtime, before, report, opts.round_to)
    report.seconds = time.perf_counter() - t0
    report.memory = MemoryUsage(planned.memory, peak_rss(), rss0, "prune" if reset else "process")
    return pruned, report
