"""Calibration statistics from any Program: each batch runs once with every site's input
captured, and each captured tensor is folded into running sums (and Grams where a refit or
OBS needs them) as soon as it exists, so memory is one batch's live values, never the
calibration set's activations. The run stops after the last site."""
from __future__ import annotations

from ..errors import PlanError
from ..util.progress import progress
from .sites import Site
from .stats import SiteStats


def collect(program, batches: list, sites: list[Site], gram: set[str]) -> dict[str, SiteStats]:
    """Statistics of every site's input on the original model (Grams for sites in ``gram``)."""
    stats = {s.node: SiteStats(s) for s in sites}
    by_value: dict[str, list[Site]] = {}
    for s in sites:
        by_value.setdefault(s.x, []).append(s)
    if not by_value:
        return stats
    for k in progress(range(len(batches)), f"calibrating ({program.framework})", len(batches)):
        valid = program.valid_rows(batches[k])

        def take(name, x, k=k, valid=valid) -> None:
            for s in by_value[name]:
                stats[s.node].add(x, s.node in gram, valid, k)

        try:
            program.run(batches[k], capture=by_value, on_capture=take, outputs=False)
        except PlanError as exc:
            raise PlanError(f"calibration batch {k}: {exc}") from exc
    return stats
