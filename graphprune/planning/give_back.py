"""Closing a budget's gap: the units a coarse scalar took beyond the budget, given back by importance
(budget.py solves the scalar; this gives back heads and round_to-channel units while the budget holds)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import numpy as np

from ..graph import Group
from .plan import step_of

if TYPE_CHECKING:
    from .budget import CostModel


def fits(got: Mapping[str, int], targets: Mapping[str, int]) -> bool:
    return all(got[k] <= t for k, t in targets.items())


def lots(groups: list[Group], lockstep: bool) -> list[list[Group]]:
    """The groups that get units back together: each alone, or under ``lockstep`` all of one kind
    and size (every layer's FFN), so a uniform plan stays uniform."""
    if not lockstep:
        return [[g] for g in groups]
    by: dict[tuple, list[Group]] = {}
    for g in groups:
        by.setdefault((g.kind, g.size), []).append(g)
    return list(by.values())


def give_back(cost: CostModel, groups: list[Group], normed: Mapping[int, np.ndarray], kept: dict[int, int],
            got: dict[str, int], targets: Mapping[str, int], round_to: int, lots: list[list[Group]],
            tries: int = 48):
    """Close the gap a coarse scalar leaves (a whole head per layer, rounded widths): give back
    units (a head, round_to channels), the most important first, while the budget holds. The
    longest prefix of that order that fits is found by bisection (a uniform ratio crossing a
    head boundary can leave millions of parameters to give back, one FFN unit at a time), then
    single units are tried where a larger one did not fit. A lot's groups (:func:`lots`) move
    together, scored by their mean."""
    kept = dict(kept)
    units: list[tuple[float, int, int]] = []  # (score, lot, kept count after giving it back)
    for i, lot in enumerate(lots):
        order = np.mean([np.sort(normed[g.id])[::-1] for g in lot], axis=0)
        first = lot[0]
        step = step_of(first, round_to)
        k = min(kept[g.id] for g in lot)
        while k < first.size:
            nxt = min(first.size, k + step)
            units.append((float(order[k]), i, nxt))
            k = nxt
    units.sort(key=lambda u: (-u[0], u[1], u[2]))  # a lot's units come in its own order: scores fall

    def give(out: dict[int, int], lot: int, k: int) -> dict[int, int]:
        for g in lots[lot]:
            out[g.id] = max(out[g.id], k)
        return out

    def with_prefix(n: int) -> dict[int, int]:
        out = dict(kept)
        for _, lot, k in units[:n]:
            give(out, lot, k)
        return out

    lo, hi = 0, len(units)  # lo fits; find the longest prefix that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        trial = with_prefix(mid)
        trial_got = cost.measure(trial)
        if fits(trial_got, targets):
            lo, kept, got = mid, trial, trial_got
        else:
            hi = mid - 1
    blocked: set[int] = set()
    for _, lot, k in units[lo + 1:lo + 1 + tries]:  # the next units, each alone where it still fits
        if lot in blocked or k <= min(kept[g.id] for g in lots[lot]):
            continue
        trial = give(dict(kept), lot, k)
        trial_got = cost.measure(trial)
        if fits(trial_got, targets):
            kept, got = trial, trial_got
        else:
            blocked.add(lot)
    return kept, got
