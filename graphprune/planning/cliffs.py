"""Kernel cliffs: widths below which a layer runs slower than it does whole (issue 21: never slower).

A runtime picks its kernel by size, and a narrower layer can fall off the fast one. PyTorch's CPU
convolution at batch 1 with a 3x3x3 kernel takes oneDNN only where batch x channels x depth x height
exceeds 20,480, and otherwise unfolds the whole volume into a matrix first (``slow_conv3d``). MONAI's
BasicUNet-3D on a 32^3 volume has a 24-channel layer just over that line: at 18 channels it ran 52.7 ms
alone against 6.4 ms at 24, and the whole model at 70% of the MACs ran 0.75x as fast as the original. No
width multiple avoids that; the layer has to keep enough channels.

So each 1-D and 3-D convolution is timed alone at its real input size (latency_table.py) at a quarter,
half, three quarters and all of each side's width, and at the narrowest a plan may keep, and read for
widths at which it runs slower than whole, by more than timing noise and by enough to matter to the whole
model. Where a second timing agrees, the narrowest width above the widest slow one that runs no slower is
found by bisection: that is the floor of that side of the layer, and every group feeding it keeps enough
channels to fill it (the solver, budget.py; the measured allocation, budget_sensitivity.py; the ratio
path, :func:`cap_ratios`). 2-D convolutions are what the width profile times (measure.py); their widths
come from its multiples and from whole plans timed against each other (widths.py).
"""
from __future__ import annotations

import math
from typing import Callable

from ..calib.distributed import same_on_all
from ..errors import PlanError
from . import latency_table
from .budget import CostModel
from .latency_table import LatencyModel, SiteOp
from .placement import Placement
from .plan import MAX_RATIO
from .plan_cache import original_ms

# A narrower op this much slower than the whole one is a cliff; below it, best-of timings of one op
# differ from run to run (a busy machine) and would make floors of noise.
TOLERANCE = 0.10
# ...and only where the loss is worth a floor: this share of the whole model's time (a first layer's
# 2.35 ms against 2.12 whole in a 90 ms BasicUNet-3D is not)
WORTH = 0.01
FLOORS_DROPPED = ("widths: the budget cannot be met with every layer kept above its kernel cliff (widths note): "
                  "solved without those floors, so the model may run slower than its MACs say")


def _nd_conv(op: SiteOp) -> bool:
    return op.kind == "conv" and len(op.w_shape) != 4


def needs_floors(dg) -> bool:
    """Whether the model has layers the width profile (measure.py, 2-D blocks) does not represent:
    1-D and 3-D convolutions, timed at their own shapes for floors."""
    return any(map(_nd_conv, latency_table.site_ops(dg)))  # what the table times, so none is built for nothing


def _again(model: LatencyModel, op: SiteOp, cin: int, cout: int) -> float:
    """``op`` at these widths timed again, best of two fresh timings (kept in the table beside its first):
    a floor stands only where a second look agrees. Timed once while another job ran, an 8 -> 6 channel
    3-D layer read 19.8 ms against 13.3 whole; alone it runs 10.6 against 11.9."""
    table = model.table
    key = "again " + op.key(cin, cout)
    if key not in table.times:
        table.times[key] = min(latency_table.time_op(table.runtime, op, cin, cout, table.where) for _ in range(2))
        table.measured += 1
    return table.times[key]


def _side(model: LatencyModel, op: SiteOp, inputs: bool, first) -> tuple[list[int], list[float], object]:
    """One side's widths and first-look times (the table's points, and the narrowest width a plan may
    keep where it lies below them), and ``at(width)``: the time timed again."""
    ins, outs, grid = first
    cin, cout = op.x_shape[op.x_slot[1]], op.w_shape[op.out_slot[1]]
    widths = list(ins if inputs else outs)
    times = [float(grid[i, -1]) for i in range(len(ins))] if inputs else [float(grid[-1, j]) for j in range(len(outs))]
    low = max(1, math.ceil(widths[-1] * (1 - MAX_RATIO) - 1e-9))
    if low < widths[0]:  # a cliff below the table's quarter width is still one a plan can reach
        widths.insert(0, low)
        times.insert(0, model.table.time(op, low, low if op.depthwise else cout) if inputs else
                     model.table.time(op, cin, low))

    def at(w: int) -> float:
        return _again(model, op, w, w if op.depthwise else cout) if inputs else _again(model, op, cin, w)
    return widths, times, at


def _floor(model: LatencyModel, widths: list[int], times: list[float], at) -> tuple | None:
    """The narrowest width above every width that runs slower than the whole, with the widest slower
    width and its time; None where none runs slower. First looks flag a cliff; every time compared
    after that is timed again (:func:`_again`)."""
    def bar(full: float) -> float:
        return max(full * (1 + TOLERANCE), full + WORTH * model.full_ms)

    if not any(t > bar(times[-1]) for t in times[:-1]):
        return None
    least = bar(at(widths[-1]))
    slow = [(w, t) for w, t in ((w, at(w)) for w, t in zip(widths[:-1], times) if t > bar(times[-1])) if t > least]
    if not slow:
        return None
    widest, t_widest = max(slow)
    lo, hi = widest, next(w for w in widths if w > widest)  # hi: no slower than whole (or the whole itself)
    while hi - lo > 1:  # lo runs slower, hi does not
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if at(mid) > least else (lo, mid)
    return hi, widest, t_widest


def cliff_floors(model: LatencyModel, dg, groups) -> tuple[dict[int, int], list[str]]:
    """Each group's least kept count so that no 1-D or 3-D layer of ``model`` runs slower than whole,
    and a line per cliff found (layer, side, the floor and the two times)."""
    ids = {g.id: g for g in groups}
    cost = CostModel(dg, groups)
    module = {n.name: n.meta.module for n in dg.ir.nodes}  # a PyTorch layer is named by its module path
    share: dict[int, float] = {}
    lines = []
    for op, first in zip(model.ops, model.points):
        if not _nd_conv(op):
            continue  # 2-D convolutions and matmuls: the width profile's multiples and timed plans (widths.py)
        for inputs in (True, False) if not op.depthwise else (True,):
            slot = op.x_slot if inputs else op.out_slot
            held = [a for a in dg.solver.atoms(dg.solver.layout(slot)) if a in ids]
            if not held:
                continue  # the slot's channels are frozen: no plan narrows it
            widths, times, at = _side(model, op, inputs, first)
            found = _floor(model, widths, times, at)
            if found is None:
                continue
            floor, below, t_below = found
            fixed = cost.slot_size(slot, dict.fromkeys(held, 0))  # channels no plan removes (frozen ones)
            if floor <= fixed:
                continue
            for gid in held:  # each group keeps its share of what the floor asks beyond the fixed channels
                share[gid] = max(share.get(gid, 0.0), (floor - fixed) / max(widths[-1] - fixed, 1))
            lines.append(f"{module.get(op.node) or op.node} {'inputs' if inputs else 'outputs'} >= {floor} of "
                         f"{widths[-1]} ({t_below:.3f} ms at {below}, {at(widths[-1]):.3f} ms whole)")
    model.table.save()
    floors = {gid: min(ids[gid].size, math.ceil(ids[gid].size * s - 1e-9)) for gid, s in share.items()}
    return {gid: k for gid, k in floors.items() if k > 1}, lines


def find_floors(program, runtime: str, dg, groups, round_to, where: Placement) -> tuple[dict[int, int], str | None]:
    """Each group's floor (group id -> least kept count; empty where no layer has a cliff) and the
    report's line for them, from the model's 1-D and 3-D convolutions timed alone on ``runtime``."""
    if not groups or not needs_floors(dg):
        return {}, None
    steps = list(round_to.values()) if isinstance(round_to, dict) else [round_to]
    model = LatencyModel(dg, runtime, original_ms(program, runtime), lambda slot: max(steps + [1]), groups=groups,
                         where=where, only=_nd_conv)
    floors, lines = cliff_floors(model, dg, groups)
    if not floors:
        return {}, None
    shown = "; ".join(lines[:4]) + (f"; and {len(lines) - 4} more" if len(lines) > 4 else "")
    return floors, (f"widths: {len(floors)} group(s) keep enough channels that no layer runs slower than whole on "
                    f"{runtime} (a narrower layer fell off the fast kernel, timed alone: {shown})")


def in_lockstep(groups, floors: dict[int, int]) -> dict[int, int]:
    """``uniform=True``: groups of one kind and size keep one count, so each takes the highest floor
    among them."""
    top: dict[tuple, int] = {}
    for g in groups:
        if g.id in floors:
            top[(g.kind, g.size)] = max(top.get((g.kind, g.size), 0), floors[g.id])
    return {g.id: top[(g.kind, g.size)] for g in groups if (g.kind, g.size) in top}


def cap_ratios(groups, ratio: float, ratios: dict | None, floors: dict[int, int], given: set[int]) -> dict | None:
    """Per-group ratios (``ratios`` over the uniform ``ratio``) with each floored group losing no more
    than its floor allows: the ratio path's share of the floors (a budget's solver keeps them itself).
    Groups whose ratio the user gave (``given``) keep it."""
    if not floors:
        return ratios
    out = dict(ratios or {})
    for g in groups:
        if g.id in floors and g.id not in given:
            out[g.id] = min(out.get(g.id, ratio), 1 - floors[g.id] / g.size)
    return out


def plan_floors(program, runtime: str, dg, groups, round_to, uniform: bool, notes: list[str]) -> dict[int, int]:
    """:func:`find_floors` as a prune uses them: timed, so across processes rank 0's (its note too); under
    ``uniform=True`` spread over each kind and size (:func:`in_lockstep`)."""
    floors, note = same_on_all(find_floors(program, runtime, dg, groups, round_to, program.placement(runtime)))
    notes.extend([note] if note else [])
    return in_lockstep(groups, floors) if uniform else floors


def with_floors(solve: Callable, floors: dict[int, int], notes: list[str]) -> tuple:
    """``solve(floors)`` and the floors it kept: where they leave a budget no room, solved without them
    (the model may then run slower than whole, which the report's latency says), and said in ``notes``."""
    try:
        return solve(floors), floors
    except PlanError:
        if not floors:
            raise
        notes.append(FLOORS_DROPPED)
        return solve({}), {}
