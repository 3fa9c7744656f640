"""Which kinds of unit a uniform cut spends its parameters on: all of them, or all but the heads.

A uniform ratio cuts every kind alike, yet an attention head is a coarse unit: on SmolLM2-135M
(three key/value heads per layer) one head group is a third of the layer's attention, while an
FFN unit is one of 1,536. Whether the heads are worth their parameters differs per model, so it
is measured, not ruled: the uniform plan and the plan that keeps every head and removes the same
parameter count from the other kinds are each refit the way the final plan will be, from one half
of the calibration items, and scored on the other half (crossfit.py): a causal LM's next-token
loss where one is given, else the output error. The lower wins. The rows are the first
calibration batches, which :func:`graphprune.hf.prune` fills with the user's own text before the
text the model samples itself: sampled text, scored held out or not, favoured cutting the heads
on SmolLM2 at 50% where every kind of real text favoured keeping them (docs/llm_pruning.md).
Front-end neutral (no torch, no onnx here).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..calib.distributed import same_on_all
from ..graph import DependencyGraph, Group
from ..metrics import count_macs, count_params
from .allocate import Repair, removed_params, sample
from .crossfit import CrossFit, heldout_errors
from .memory import available_memory, gib
from .plan import make_plan

SPARED = ("head", "query_group")  # the coarse kinds a candidate keeps whole
ROWS = 4096  # calibration rows (tokens) the choice is scored on at most
HOLD = 8  # bytes per parameter a candidate may hold at once: two fp32 refits (one per half), as if all were refit
MACS = 5e12  # and at most this many MACs of masked runs (about a minute on two CPU cores; fewer rows on big models)


@dataclass
class KindChoice:
    """What was measured: each candidate's name, parameters removed and score, and which one won."""

    names: list[str]
    removed: list[int]
    scores: list[float]
    measure: str
    rows: int
    chosen: int = 0

    def note(self) -> str:
        parts = "; ".join(f"{n}: {s:.4g}, {r:,} parameters removed" for n, s, r in zip(self.names, self.scores,
                                                                                     self.removed))
        return (f"units: {self.names[self.chosen]}, the lower {self.measure} on {self.rows} calibration rows "
                f"({parts}); allocation='uniform' cuts every kind by the ratio without measuring")


def spend_elsewhere(dg: DependencyGraph, groups: list[Group], scores, ratio: float, round_to, target: int,
                    max_ratio: float, before: int) -> dict[int, float] | None:
    """Ratios that keep ``groups[kind in SPARED]`` whole and remove at least ``target`` parameters
    from the rest by one shared ratio (bisected; None when even ``max_ratio`` removes too few)."""
    spared = {g.id for g in groups if g.kind in SPARED}
    rest = [g for g in groups if g.id not in spared]

    def ratios(r: float) -> dict[int, float]:
        return {**{g: 0.0 for g in spared}, **{g.id: r for g in rest}}

    def removed(r: float) -> int:
        return removed_params(dg, make_plan(groups, scores, ratio, round_to, ratios(r)), before)

    if not rest or removed(max_ratio) < target:
        return None
    lo, hi = ratio, max_ratio
    for _ in range(24):  # to about 1e-7 of the ratio; each step is one plan and a parameter count
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if removed(mid) < target else (lo, mid)
    return ratios(hi)


def choose_kinds(program, dg: DependencyGraph, groups: list[Group], scores, ratio: float, round_to,
                 batches: list, mode: str | None, stats, lams: dict | None, loss, max_ratio: float, notes: list[str]
                 ) -> tuple[dict[int, float] | None, KindChoice | None]:
    """(ratios, what was measured): the spared plan's ratios where it scores lower than the uniform
    cut, else None (the uniform cut stands); (None, None) where there is nothing to choose (the uniform
    cut removes no head, or the other kinds cannot make up its count) or where scoring would hold over
    half the memory available (``notes`` then says so)."""
    uniform = make_plan(groups, scores, ratio, round_to)
    if not any(uniform.pruned.get(g.id) for g in groups if g.kind in SPARED):
        return None, None
    before = count_params(dg.ir)
    target = removed_params(dg, uniform, before)
    other = spend_elsewhere(dg, groups, scores, ratio, round_to, target, max_ratio, before)
    if other is None:
        return None, None
    free = same_on_all(available_memory())  # one decision on every rank: the scoring below reduces over them
    if free is not None and HOLD * before > free / 2:  # a measurement must never be what runs out of memory
        notes.append(f"units: every kind cut by the ratio, not measured: scoring the heads-kept plan holds up to "
                     f"{gib(HOLD * before)} of refit weights, over half the {gib(free)} available")
        return None, None
    spared = make_plan(groups, scores, ratio, round_to, other)
    repair = Repair(program, dg, uniform, batches, mode, stats, lams)
    per_row = count_macs(dg.ir) / max(1, program.rows(program.oracle_inputs(0)[0]))
    used, rows = sample(program, batches, int(min(ROWS, MACS / (2 * per_row))))
    err, measure = heldout_scores(program, repair, used, (uniform, spared), loss)
    choice = KindChoice(["every kind cut by the ratio", "heads kept, the other units cut to the same parameter count"],
                        [target, removed_params(dg, spared, before)], err, measure, rows, chosen=int(err[1] < err[0]))
    return (other if choice.chosen else None), choice


def heldout_scores(program, repair: Repair, used: list, plans, loss) -> tuple[list[float], str]:
    """Each plan's held-out score: refit from one half of the calibration items, scored on the other
    (crossfit.py), as the final refit meets text it was not fitted on; the loss where one is given and
    the batches can be cut in halves, else the relative output error. One plan at a time: each holds
    its two refits (a third of an LLM's weights each) only while it runs."""
    fit = CrossFit(repair)
    if loss is not None:
        got = [heldout_errors(program, used, [fit.variants(p)], "choosing unit kinds", loss=loss) for p in plans]
        if all(g is not None for g in got):
            return [float(g[0]) for g in got], "held-out calibration loss"
    return ([float(heldout_errors(program, used, [fit.variants(p)], "choosing unit kinds")[0]) for p in plans],
            "held-out relative output error")
