"""Spending a MACs or parameter budget by measured sensitivity: each group pruned alone at a few
ratios, its output error measured against what the cut saves, and the cheapest savings per unit of
error taken first (the hull walk of allocate.py). The measured curves outlive the solve, so the
budget can be re-spent at other width multiples (round_to="auto" times x1/x2/x4 of them) without
measuring again. Front-end neutral (no torch, no onnx here).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

from ..graph import Group
from ..metrics import node_macs
from .allocate import ROWS, Repair, hull, item_count, sample, spend_cheapest
from .budget import CostModel, parse_budget
from .crossfit import CrossFit, heldout_errors
from .plan import keep_masks, kept_count, make_plan, step_of
from .scoring import output_errors

# ratios tried per group under a budget: four measured as well as six (0.1 ... 0.75) on EfficientNet-Lite0
# at 20% fewer MACs (held-out KL 0.253 both), in two thirds of the time
BUDGET_LEVELS = (0.15, 0.3, 0.5, 0.75)
# allocation="auto" spends a MACs / parameter budget by held-out sensitivity when the scoring runs on
# at least AUTO_MIN_ITEMS calibration items are estimated at AUTO_BUDGET_S or less (two CPU cores),
# on as many rows as that time buys (at most allocate.ROWS). EfficientNet-Lite0 on 64 items kept
# what 160 did (held-out KL 0.25 against 0.26; uniform: 0.88) in 110 s (docs/runtime.md).
AUTO_BUDGET_S = 120.0
AUTO_MIN_ITEMS = 32
# ... and measures on AUTO_MIN_ITEMS items where those alone cost up to AUTO_LIMIT_S. EfficientNet-Lite2 (at
# 256x256, an estimated 129 s on 32 items) stayed uniform under a 120 s limit and kept 0.42 top-1 agreement on
# other photos at 20% fewer MACs, where the measured plan of Lite0 and Lite1 keeps 0.71-0.74 (docs/runtime.md)
AUTO_LIMIT_S = 300.0
# ... and when the budget removes at most this share of the MACs / parameters. At 20% fewer MACs the
# measured plan keeps the speed (EfficientNet-Lite0 in onnxruntime: 1.16x-1.22x against uniform's
# 1.24x-1.28x) and halves the KL on other photos; at 40% it keeps 0.42 top-1 agreement on other photos
# (0.79 where the original is confident) where uniform keeps 0.13 (0.25), at 1.39x-1.56x against
# 1.60x-1.78x (2026-12-06; at 30% before, a user's 40% prune came out useless without a word); at 50%
# it ran 1.55x-1.72x where the time-tilted uniform plan runs 1.88x-2.16x, and neither survives one shot
# (agreement 0.14 and 0.05).
AUTO_MAX_CUT = 0.4
# the scoring runs' throughput on two CPU cores, refits included, fitted to EfficientNet-Lite0 in torch's
# FX interpreter (1.7 s per item; through onnxruntime it measured slower, 718 s against 420 s on 160
# items): MACs of convolutions and matmuls, and elements every op writes (the memory-bound part:
# depthwise convolutions, norms, activations, which MACs alone undercount ~10x)
MAC_RATE, ELEM_RATE = 3e10, 7e8


@dataclass
class BudgetCurves:
    """Each group's measured (budget saved, error, ratio) points, and the budget they spend."""

    groups: list[Group]
    curves: dict[int, list[tuple[int, float, float]]]
    cost: object  # budget.CostModel
    targets: dict[str, int]
    metric: str

    def solve(self, round_to) -> dict[int, float] | None:
        """Per-group ratios meeting every target at width steps ``round_to``, cheapest error per
        unit saved first; None where the measured levels cannot meet them together."""
        groups, cost, targets, metric = self.groups, self.cost, self.targets, self.metric
        full = cost.measure({})
        needed = full[metric] - targets[metric]

        def kept_of(ratios):
            return {g.id: kept_count(g.size, ratios.get(g.id, 0.0), step_of(g, round_to)) for g in groups}

        goal, most = needed, sum(c[-1][0] for c in map(hull, self.curves.values()))
        for _ in range(12):  # savings of groups sharing a weight are not additive: raise the goal until it holds
            ratios = spend_cheapest(groups, self.curves, goal, round_to, lambda g, r: full[metric] - cost.measure(
                {g.id: kept_count(g.size, r, step_of(g, round_to))})[metric])
            got = cost.measure(kept_of(ratios))
            if all(got[k] <= t for k, t in targets.items()) or goal >= most:
                break
            goal = int(math.ceil(goal * needed / max(full[metric] - got[metric], 1)))
        return ratios if all(got[k] <= t for k, t in targets.items()) else None


def scoring_seconds(dg, groups: list[Group]) -> float:
    """Estimated seconds of held-out scoring per example input: each candidate (every group at every
    level) runs the model from the first node reading one of its group's weights onwards (the dense
    prefix is shared), at :data:`MAC_RATE` and :data:`ELEM_RATE`. From shapes alone, so every run
    and every rank decides alike."""
    ir = dg.ir

    def size(name: str) -> int:
        v = ir.values.get(name)
        return math.prod(int(d) for d in v.shape if isinstance(d, int)) if v is not None else 0

    cost = [node_macs(n, lambda name: ir.values[name].shape) / MAC_RATE + sum(map(size, n.outputs)) / ELEM_RATE
            for n in ir.nodes]
    tail = [0.0] * (len(cost) + 1)
    for i in range(len(cost) - 1, -1, -1):
        tail[i] = tail[i + 1] + cost[i]
    first: dict[str, int] = {}
    for i, n in enumerate(ir.nodes):
        for name in n.inputs:
            first.setdefault(name, i)
    return sum(len(BUDGET_LEVELS) * tail[min((first.get(m.value, len(cost)) for m in g.members), default=len(cost))]
               for g in groups)


def auto_rows(program, dg, groups: list[Group], batches: list, notes: list[str]) -> int | None:
    """The calibration rows allocation="auto" measures a budget's sensitivity on: what
    :data:`AUTO_BUDGET_S` buys (at most allocate.ROWS, at least :data:`AUTO_MIN_ITEMS` items),
    or None (uniform, said in ``notes``) where :data:`AUTO_MIN_ITEMS` items, or the first calibration
    batch alone (scored whole), would cost more than :data:`AUTO_LIMIT_S`."""
    example = program.oracle_inputs(0)[0]
    rows = max(1, program.rows(example))
    per_item = rows / max(1, item_count(program, example))
    per_row = scoring_seconds(dg, groups) / rows
    need = math.ceil(AUTO_MIN_ITEMS * per_item)
    least = max(need, program.rows(batches[0]))  # sample() takes at least the first batch
    if per_row * least > AUTO_LIMIT_S:
        notes.append(f"allocation: uniform; measuring each group's held-out sensitivity on {least} calibration rows "
                     f"would take about {per_row * least:.0f} s (over the {AUTO_LIMIT_S:.0f} s that auto spends): "
                     "pass allocation='sensitivity' to measure it")
        return None
    return int(max(need, min(ROWS, AUTO_BUDGET_S / max(per_row, 1e-12))))


def budget_rows(opts, mode: str | None, program, dg, groups: list[Group], budget, batches: list, notes: list[str]
                ) -> int | None:
    """The calibration rows a budget's sensitivity is measured on: up to allocate.ROWS when
    asked for; under ``"auto"`` what :func:`auto_rows` affords, where a refit (``mode``) follows
    and the budget cuts more than nothing and at most :data:`AUTO_MAX_CUT`; else None (the
    budget stays solved uniformly; ``uniform=True`` keeps one width per kind)."""
    if opts.allocation == "sensitivity":
        return ROWS
    if opts.allocation != "auto" or opts.uniform:
        return None
    full = CostModel(dg, groups).measure({})
    cut = max(1 - t / max(full[k], 1) for k, t in parse_budget(budget, full).items())
    if cut <= 0:
        return None
    if mode is None:
        notes.append("allocation: uniform; auto measures a budget's held-out sensitivity only where a refit follows "
                     "(compensate=False here): pass allocation='sensitivity' to measure it by masks")
        return None
    if cut > AUTO_MAX_CUT + 0.005:  # macs=0.6 is a cut of 0.4000000000000001, or more once counts are rounded
        notes.append(f"allocation: uniform; the budget removes {cut:.0%} (auto measures held-out sensitivity up to "
                     f"{AUTO_MAX_CUT:.0%}, where it keeps the speed): pass allocation='sensitivity' to measure it")
        return None
    return auto_rows(program, dg, groups, batches, notes)


def allocate_budget(program, cost, groups: list[Group], scores, targets: dict[str, int], round_to, batches: list,
                    max_ratio: float, notes: list[str], repair: Repair | None = None, rows: int = ROWS,
                    floors: dict[int, int] | None = None) -> tuple[dict[int, float], BudgetCurves] | None:
    """Per-group ratios meeting a MACs / parameter budget where the output suffers least, and the
    curves they were solved from: each group is pruned alone at :data:`BUDGET_LEVELS`, its output
    error measured on the calibration rows against what it saves of the budget's metric (MACs
    first). With ``repair``, each candidate is refit as the final plan will be and scored on
    held-out items (crossfit.py: a refit scored where it was fitted makes deep layers look
    cheaper than they are on other data); without, masks only. None where the levels cannot meet
    the budget together (the caller then solves it uniformly). ``rows``: the calibration rows
    scored, the first batches' (at least one batch). ``floors``: the least count a group keeps (a
    kernel cliff below it, cliffs.py); its levels stop there."""
    t0 = time.perf_counter()
    metric = "macs" if "macs" in targets else "params"
    full = cost.measure({})
    used, rows = sample(program, batches, rows)
    variants, keys = [], []
    for g in groups:
        most = min(max_ratio, 1 - (floors or {}).get(g.id, 0) / g.size)
        for r in sorted({min(lv, most) for lv in BUDGET_LEVELS}):
            p = make_plan([g], scores, 0.0, round_to, {g.id: r})
            kept = {g.id: g.size - len(p.pruned[g.id])}
            saved = full[metric] - cost.measure(kept)[metric]
            if saved <= 0 or (keys and keys[-1][0] == g.id and keys[-1][2] >= saved):
                continue
            variants.append(p)
            keys.append((g.id, r, saved))
    if repair is not None:
        fit = CrossFit(repair)
        err = heldout_errors(program, used, [fit.variants(p) for p in variants], "allocating the budget (held out)")
    else:
        err = output_errors(program, used, [(keep_masks(program.graph(), p), {}) for p in variants],
                            "allocating the budget")
    curves: dict[int, list[tuple[int, float, float]]] = {g.id: [(0, 0.0, 0.0)] for g in groups}
    for (gid, r, n), e in zip(keys, err):
        curves[gid].append((int(n), float(e), r))
    measured = BudgetCurves(groups, curves, cost, dict(targets), metric)
    ratios = measured.solve(round_to)
    if ratios is None:
        notes.append(f"allocation: uniform; the levels measured for {len(groups)} group(s) cannot meet the budget "
                     "together")
        return None
    how = "refit on one fold, scored on the other" if repair is not None else "masks only"
    notes.append(f"allocation: sensitivity under the {metric} budget ({how}), {len(variants)} candidate(s) on {rows} "
                 f"calibration row(s) ({time.perf_counter() - t0:.1f} s)")
    return ratios, measured
