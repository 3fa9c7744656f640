"""Kernel cliffs: widths below which a layer runs slower than it does whole (issue 21: never slower).

A runtime picks its kernel by size, and a narrower layer can fall off the fast one. PyTorch's CPU
convolution at batch 1 with a 3x3x3 kernel takes oneDNN only where batch x channels x depth x height
exceeds 20,480, and otherwise unfolds the whole volume into a matrix first (``slow_conv3d``). MONAI's
BasicUNet-3D on a 32^3 volume has a 24-channel layer just over that line: cut to 16 channels it ran
slower than at 24, and the whole model at 70% of the MACs ran 0.71x as fast as the original. No width
multiple avoids that; the layer has to keep enough channels.

So each 1-D and 3-D convolution of the latency table (latency_table.py: every convolution and linear timed
alone at its real input size) is read for widths at which it runs slower than at its full width, by
more than timing noise and enough to matter to the whole model. (2-D convolutions are what the width
profile times, measure.py; their widths come from its multiples and whole plans timed, widths.py.) Above the widest
such width, the narrowest width that runs no slower is found by bisection between table points; that
is the slot's floor. Every group in the slot keeps at least that share of its channels, which the
budget's solver (budget.py) and the ratio path both honour, so the budget is spent elsewhere.
"""
from __future__ import annotations

import math

from ..calib.sites import find_sites
from . import latency_table
from .latency_table import LatencyModel, SiteOp
from .placement import Placement
from .plan_cache import original_ms

# A narrower op this much slower than the whole one is a cliff; below it, best-of timings of one op
# differ from run to run (a busy machine) and would make floors of noise.
TOLERANCE = 0.10
# ...and only where the loss is worth a floor: this share of the whole model's time (a first layer's
# 2.35 ms against 2.12 whole in a 90 ms BasicUNet-3D is not)
WORTH = 0.01


def needs_table(dg) -> bool:
    """Whether the model has layers the width profile (measure.py, 2-D blocks) does not represent:
    1-D and 3-D convolutions, timed at their own shapes for floors."""
    return any(s.kind == "conv" and len(s.kernel) != 2 for s in find_sites(dg))


def site_latency(program, runtime: str, dg, groups, round_to, where: Placement) -> LatencyModel:
    """The latency table of ``dg``'s layers on ``runtime``, its grid at the coarsest measured step."""
    steps = list(round_to.values()) if isinstance(round_to, dict) else [round_to]
    return LatencyModel(dg, runtime, original_ms(program, runtime), lambda slot: max(steps + [1]), groups=groups,
                        where=where)


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


def _floor(model: LatencyModel, op: SiteOp, widths: list[int], times: list[float], inputs: bool) -> tuple | None:
    """The narrowest width of one side of ``op`` (the other whole) above every width that runs slower
    than the whole op, with the widest slower table point and its time; None where none runs slower.
    The table's points flag a cliff; every time compared after that is timed again (:func:`_again`)."""
    def bar(full: float) -> float:
        return max(full * (1 + TOLERANCE), full + WORTH * model.full_ms)

    if not any(t > bar(times[-1]) for t in times[:-1]):
        return None
    cin, cout = op.x_shape[op.x_slot[1]], op.w_shape[op.out_slot[1]]

    def at(w: int) -> float:
        return _again(model, op, w, w if op.depthwise else cout) if inputs else _again(model, op, cin, w)

    least = bar(at(widths[-1]))
    slow = [(w, at(w)) for w, t in zip(widths[:-1], times) if t > bar(times[-1])]
    slow = [(w, t) for w, t in slow if t > least]
    if not slow:
        return None
    lo, t_lo = max(slow)
    hi = next(w for w in widths if w > lo)  # no slower than whole (or the whole itself)
    while hi - lo > 1:  # lo runs slower, hi does not
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if at(mid) > least else (lo, mid)
    return hi, max(slow)[0], t_lo


def cliff_floors(model: LatencyModel, dg, groups) -> tuple[dict[int, int], list[str]]:
    """Each group's least kept count so that no layer of the table runs slower than whole, and a line
    per cliff found (layer, side, the floor and the two times)."""
    ids = {g.id: g for g in groups}
    module = {n.name: n.meta.module for n in dg.ir.nodes}  # a PyTorch layer is named by its module path
    share: dict[int, float] = {}
    lines = []
    for op, (ins, outs, grid) in zip(model.ops, model.points):
        if not (op.kind == "conv" and len(op.w_shape) != 4):
            continue  # 2-D convolutions and matmuls: the width profile's multiples and timed plans (widths.py)
        sides = [(op.x_slot, ins, [float(grid[i, -1]) for i in range(len(ins))], True)]
        if not op.depthwise:
            sides.append((op.out_slot, outs, [float(grid[-1, j]) for j in range(len(outs))], False))
        for slot, widths, times, inputs in sides:
            found = _floor(model, op, widths, times, inputs)
            if found is None:
                continue
            floor, below, t_below = found
            held = [a for a in dg.solver.atoms(dg.solver.layout(slot)) if a in ids]
            if not held:
                continue  # the slot's channels are frozen: no plan narrows it
            for gid in held:
                share[gid] = max(share.get(gid, 0.0), floor / widths[-1])
            whole = _again(model, op, op.x_shape[op.x_slot[1]], op.w_shape[op.out_slot[1]])
            lines.append(f"{module.get(op.node) or op.node} {'inputs' if inputs else 'outputs'} >= {floor} of {widths[-1]} "
                         f"({t_below:.3f} ms at {below}, {whole:.3f} ms whole)")
    model.table.save()
    floors = {gid: min(ids[gid].size, math.ceil(ids[gid].size * s - 1e-9)) for gid, s in share.items()}
    return {gid: k for gid, k in floors.items() if k > 1}, lines


def floors_note(runtime: str, floors: dict[int, int], lines: list[str]) -> str | None:
    """The report's line for the floors (None where there are none)."""
    if not floors:
        return None
    shown = "; ".join(lines[:4]) + (f"; and {len(lines) - 4} more" if len(lines) > 4 else "")
    return (f"widths: {len(floors)} group(s) keep enough channels that no layer runs slower than whole on {runtime} "
            f"(a narrower layer fell off the fast kernel, timed alone: {shown})")


def find_floors(program, runtime: str, dg, groups, round_to, notes: list[str]) -> tuple[LatencyModel | None, dict]:
    """The latency table where floors call for one (:func:`needs_table`; the time tilt then reads it
    too) and each group's floor from it (group id -> least kept count; empty where no layer has a cliff)."""
    if not groups or not needs_table(dg):
        return None, {}
    model = site_latency(program, runtime, dg, groups, round_to, program.placement(runtime))
    floors, lines = cliff_floors(model, dg, groups)
    note = floors_note(runtime, floors, lines)
    notes.extend([note] if note else [])
    return model, floors


def cap_ratios(groups, ratio: float, ratios: dict | None, floors: dict[int, int]) -> dict | None:
    """Per-group ratios (``ratios`` over the uniform ``ratio``) with each floored group losing no more
    than its floor allows: the ratio path's share of the floors (a budget's solver keeps them itself)."""
    if not floors:
        return ratios
    out = dict(ratios or {})
    for g in groups:
        if g.id in floors:
            out[g.id] = min(out.get(g.id, ratio), 1 - floors[g.id] / g.size)
    return out
