"""The repair that goes with the final plan: compensation on the calibration batches, then its held-out check
(planning/heldout.py). The pipeline runs it once the plan has held the oracle, before the rewrite applies it."""
from __future__ import annotations

from ..graph import DependencyGraph
from ..options import PruneOptions, compensation_mode
from ..planning.heldout import check_quality
from .collect import calib_batches
from .compensate import Compensation, ridge_by_node
from .compensate import compensate as run_compensation
from .sites import find_sites


def final_repair(program, dg: DependencyGraph, opts: PruneOptions, planned) -> Compensation | None:
    """The plan's layers refit (or biases compensated) on the calibration batches, with the ridge strengths the
    allocation's repairs cross-validated, then the quality check on held-out items; None where no repair is asked
    for or nothing is cut. ``planned``: graphprune.pipeline.Planned."""
    mode = compensation_mode(opts)
    if mode is None or planned.plan.empty:
        return None
    batches = planned.batches if planned.batches is not None else calib_batches(program, opts.calib, opts.calib_tokens)
    add = program.bias_free(find_sites(dg)) if opts.add_bias else set()
    stats = planned.ctx.stats if planned.ctx is not None else None
    # the ridge strengths the allocation's repairs cross-validated serve the final refit too
    lams = dict(planned.allocation.lams) if planned.allocation is not None else {}
    lams.update(ridge_by_node(dg, opts.ridge, find_sites(dg)))
    comp = run_compensation(program, dg, planned.plan, batches, mode, add, stats, lams)
    check_quality(program, dg, planned.plan, batches, comp, "bias" if mode == "bias" else "refit", opts.heldout_check)
    return comp
