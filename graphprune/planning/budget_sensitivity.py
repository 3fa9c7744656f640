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
from .allocate import Repair, hull, sample, spend_cheapest
from .crossfit import CrossFit, heldout_errors
from .plan import keep_masks, kept_count, make_plan, step_of
from .scoring import output_errors

BUDGET_LEVELS = (0.1, 0.2, 0.3, 0.45, 0.6, 0.75)  # ratios tried per group under a budget


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
            ratios = spend_cheapest(groups, self.curves, goal, round_to)
            got = cost.measure(kept_of(ratios))
            if all(got[k] <= t for k, t in targets.items()) or goal >= most:
                break
            goal = int(math.ceil(goal * needed / max(full[metric] - got[metric], 1)))
        return ratios if all(got[k] <= t for k, t in targets.items()) else None


def allocate_budget(program, cost, groups: list[Group], scores, targets: dict[str, int], round_to, batches: list,
                    max_ratio: float, notes: list[str], repair: Repair | None = None
                    ) -> tuple[dict[int, float], BudgetCurves] | None:
    """Per-group ratios meeting a MACs / parameter budget where the output suffers least, and the
    curves they were solved from: each group is pruned alone at :data:`BUDGET_LEVELS`, its output
    error measured on the calibration rows against what it saves of the budget's metric (MACs
    first). With ``repair``, each candidate is refit as the final plan will be and scored on
    held-out items (crossfit.py: a refit scored where it was fitted makes deep layers look
    cheaper than they are on other data); without, masks only. None where the levels cannot meet
    the budget together (the caller then solves it uniformly)."""
    t0 = time.perf_counter()
    metric = "macs" if "macs" in targets else "params"
    full = cost.measure({})
    used, rows = sample(program, batches)
    variants, keys = [], []
    for g in groups:
        for r in sorted({min(lv, max_ratio) for lv in BUDGET_LEVELS}):
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
