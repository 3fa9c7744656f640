"""Held-out repair errors: each candidate's refit fitted on one calibration fold, scored on the other.

A refit fitted and scored on the same few calibration items looks better than it will on other
data, and most at deep sites with few rows (EfficientNet-Lite0's head conv: 0.014 relative
error on its calibration photos, 0.117 on others). Allocation by in-sample repaired errors so
over-spends the deep layers; allocation by masks alone ignores what the refit recovers and
over-spends the ones a refit repairs well. Cross-fitting scores a candidate as the final plan
will behave on new inputs: the refit fitted on fold 0 (even items) is scored on fold 1 (odd
items) and the other way round, from the two folds calibration already keeps per site.
Front-end neutral (no torch, no onnx here).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..calib.compensate import Compensation, affected_sites, refit_from_stats
from ..calib.distributed import reduce_sum
from .allocate import item_count
from .plan import PrunePlan, block_masks, keep_masks
from .scoring import output_energy, output_errors


def fold_stats(stats: dict, k: int) -> dict:
    """The calibration statistics with only fold ``k``'s input Grams (channel statistics whole)."""
    return {n: dataclasses.replace(st, folds=[st.folds[k]]) if st is not None and st.folds and len(st.folds) == 2
            else st for n, st in stats.items()}


class CrossFit:
    """The two held-out repairs of any candidate plan, beside a :class:`~.allocate.Repair` (whose
    cross-validated ridge strengths they keep: a fold alone has no second fold to pick one on)."""

    def __init__(self, repair) -> None:
        self.repair = repair
        self.folds = [fold_stats(repair.stats, k) for k in (0, 1)]

    def variants(self, p: PrunePlan) -> list[tuple[dict, dict]]:
        """(masks, weight overrides) of ``p`` refit on fold 0, then on fold 1."""
        r = self.repair
        masks = {**keep_masks(r.dg, p), **block_masks(r.dg, p)}
        out = []
        for stats in self.folds:
            comp = Compensation()
            if any(p.pruned.values()):
                refit_from_stats(r.dg, affected_sites(r.dg, p, r.sites, comp), r.tensors, stats, r.fit, set(), comp,
                                 r.lams)
            out.append((masks, comp.updates))
        return out


def fold_batches(program, used: list, parity: list[np.ndarray]) -> list[list] | None:
    """Each fold's items of ``used`` as batches of their own (a batch's even items, its odd
    items), so a variant runs only on the items it is scored on; None where the program cannot
    run part of a batch (a fixed batch size), or where part of a batch does not give those
    items' outputs (an input cut that is not per item, outputs that mix items)."""
    out: list[list] = [[], []]
    checked: set = set()
    for b, par in zip(used, parity):
        for f in (0, 1):
            chosen = par == f
            if chosen.all():
                out[f].append(b)
                continue
            if not chosen.any():
                continue
            part = program.take(b, chosen)
            if part is None:
                return None
            shape = program.first_input(b)
            if shape not in checked:  # once per input shape: the cut batch's outputs are the whole batch's rows
                if not _same_rows(program, b, part, chosen):
                    return None
                checked.add(shape)
            out[f].append(part)
    return out


def _same_rows(program, whole, part, chosen: np.ndarray) -> bool:
    try:
        a, b = program.run(whole), program.run(part)
    except Exception:  # noqa: BLE001 - any failure at the cut size: run whole batches instead
        return False
    n = len(chosen)
    return len(a) == len(b) and all(
        x.ndim and x.shape[0] == n and y.shape == x[chosen].shape and
        np.allclose(y, x[chosen], rtol=1e-3, atol=1e-5 * max(float(np.abs(x).max()), 1.0)) for x, y in zip(a, b))


def heldout_errors(program, used: list, pairs: list[list[tuple[dict, dict]]], what: str, loss=None) -> np.ndarray:
    """Each candidate's squared output error relative to the output's energy, every calibration
    item scored once: under the refit fitted on the *other* fold. ``pairs``: per candidate,
    (refit on fold 0, refit on fold 1), as :meth:`CrossFit.variants` gives them. Folds are the
    parity of an item's index over all of ``used`` (as calibration counts them), on every rank.
    With ``loss`` (outputs, batch -> float), the mean of the two halves' mean loss instead; it needs
    batches that can be cut into their folds (None where they cannot)."""
    starts = np.cumsum([0] + [item_count(program, b) for b in used])
    parity = [np.arange(a, z) % 2 for a, z in zip(starts[:-1], starts[1:])]
    flat = [v for pair in pairs for v in pair]
    folds = fold_batches(program, used, parity)
    # every rank takes the same path (their collectives differ): cut batches only where all can
    if reduce_sum([np.array([float(folds is None)])])[0][0] > 0:
        folds = None
    if loss is not None:
        return None if folds is None else sum(
            output_errors(program, folds[1 - f], flat[f::2], f"{what}, half {f + 1} of 2", loss=loss) / 2
            for f in (0, 1))
    if folds is None:  # every variant runs on every item; each counts the other fold's
        # variant v was fitted on fold v % 2: it is scored on the other fold's items
        err = output_errors(program, used, flat, what, items=lambda v, k: parity[k] == 1 - v % 2)
        return err[0::2] + err[1::2]
    energy = output_energy(program, folds[0]) + output_energy(program, folds[1])
    return sum(output_errors(program, folds[1 - f], flat[f::2], f"{what}, half {f + 1} of 2", energy=energy)
               for f in (0, 1) if folds[1 - f])
