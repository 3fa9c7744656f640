"""Held-out repair errors (graphprune/planning/crossfit.py): each item scored once, under the refit
fitted on the other fold; the in-sample figure it replaces is optimistic where rows are few."""
from __future__ import annotations

import numpy as np
import torch
from helpers import tiny_onnx_model
from torch import nn

from graphprune.options import PruneOptions
from graphprune.pipeline import plan_program
from graphprune.planning.allocate import Repair
from graphprune.planning.crossfit import CrossFit, fold_batches, fold_stats, heldout_errors
from graphprune.planning.plan import keep_masks, make_plan
from graphprune.planning.scoring import output_errors
from graphprune.program.onnx_program import OnnxProgram
from graphprune.program.torch_program import TorchProgram


def _planned(items_per_batch: int, batches: int):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 40), nn.ReLU(), nn.Linear(40, 10), nn.ReLU(), nn.Linear(10, 3)).eval()
    g = torch.Generator().manual_seed(1)
    calib = [(torch.randn(items_per_batch, 12, generator=g),) for _ in range(batches)]
    program = TorchProgram(model, (calib[0][0][:1],))
    planned = plan_program(program, PruneOptions(calib=calib, ratio=0.5, runtime=None))
    dg = program.graph()
    groups = [g for g in dg.prunable_groups() if g.id in planned.plan.sizes]
    repair = Repair(program, dg, planned.plan, planned.batches, "refit", planned.ctx.stats)
    cands = [make_plan([g], planned.scores, 0.0, 1, {g.id: 0.5}) for g in groups]
    return program, planned, repair, cands


def test_fold_stats_keeps_one_fold_of_each_gram():
    _, _, repair, _ = _planned(5, 3)  # 15 items: folds of 8 (even) and 7 (odd)
    whole = {n: st for n, st in repair.stats.items() if st is not None and st.folds}
    assert whole
    for k in (0, 1):
        part = fold_stats(repair.stats, k)
        for n, st in whole.items():
            assert len(part[n].folds) == 1
            assert torch.equal(part[n].gram.m, st.folds[k].m)
    assert [n for n in whole] and all(len(st.folds) == 2 for st in whole.values())  # the original untouched


def test_the_same_variant_on_both_folds_scores_as_every_item_once():
    program, planned, _, cands = _planned(5, 3)
    masks = [(keep_masks(program.graph(), p), {}) for p in cands]
    plain = output_errors(program, planned.batches, masks, "plain")
    held = heldout_errors(program, planned.batches, [[m, m] for m in masks], "held out")
    assert np.all(plain > 0)
    np.testing.assert_allclose(held, plain, rtol=1e-6)


def test_fold_batches_score_as_the_masked_items_do(monkeypatch):
    # each variant run only on its scored items (batches cut by program.take) gives the errors of
    # running every item and counting the other fold's: the cheap path changes cost, not result
    program, planned, repair, cands = _planned(5, 3)
    fit = CrossFit(repair)
    pairs = [fit.variants(p) for p in cands]
    cuts, take = [], program.take
    monkeypatch.setattr(program, "take", lambda b, items: cuts.append(take(b, items)) or cuts[-1])
    cut = heldout_errors(program, planned.batches, pairs, "cut batches")
    assert cuts and all(c is not None for c in cuts)  # the cheap path did run on cut batches
    taken = []
    monkeypatch.setattr(program, "take", lambda b, items: taken.append(items.sum()) or None)
    whole = heldout_errors(program, planned.batches, pairs, "whole batches")
    assert taken  # the fallback was asked for, refused, and took the masked path
    assert np.all(cut > 0)
    np.testing.assert_allclose(cut, whole, rtol=1e-5)


def test_take_keeps_the_chosen_items_of_every_batched_input():
    program, planned, _, _ = _planned(5, 1)
    b = planned.batches[0]
    items = np.array([True, False, True, False, True])
    part = program.take(b, items)
    assert torch.equal(part[0][0], b[0][0][[0, 2, 4]])
    assert program.run(part)[0].shape[0] == 3


def test_a_refit_scored_on_the_other_fold_is_not_the_optimistic_in_sample_one():
    # 12 items for a 40-wide hidden layer: a refit fitted on these items nearly reproduces them
    program, planned, repair, cands = _planned(4, 3)
    inside = output_errors(program, planned.batches, [repair.variant(p) for p in cands], "in sample")
    fit = CrossFit(repair)
    held = heldout_errors(program, planned.batches, [fit.variants(p) for p in cands], "held out")
    masks = output_errors(program, planned.batches, [(keep_masks(program.graph(), p), {}) for p in cands], "masks")
    assert np.all(held > inside), (held, inside)
    assert np.all(inside < masks)  # the refit repairs what it was fitted on


def test_a_repaired_sensitivity_budget_scores_candidates_held_out():
    import copy

    import graphprune as gp
    from graphprune.zoo import build

    model, args = build("mobilenetv2")
    model.eval()
    g = torch.Generator().manual_seed(0)
    calib = [(torch.randn(4, *args[0].shape[1:], generator=g),) for _ in range(2)]
    _, rep = gp.prune(copy.deepcopy(model), args, budget={"macs": 0.7}, calib=calib, allocation="sensitivity",
                      runtime=None)
    # (masks only, compensate=False: tests/test_allocation.py)
    assert any("sensitivity under the macs budget (refit on one fold, scored on the other)" in n
               for n in rep.notes), rep.notes
    assert rep.macs_after <= 0.7 * rep.macs_before + 1


def test_onnx_take_cuts_a_dynamic_batch_and_refuses_a_fixed_one():
    model = tiny_onnx_model()
    x = np.random.default_rng(2).standard_normal((4, 4)).astype(np.float32)
    items = np.array([False, True, True, False])
    program = OnnxProgram(model)
    part = program.take({"x": x}, items)
    np.testing.assert_array_equal(part["x"], x[1:3])
    np.testing.assert_allclose(program.run(part)[0], program.run({"x": x})[0][1:3], rtol=1e-6)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4  # the batch fixed at 4 items
    assert OnnxProgram(model).take({"x": x}, items) is None


def test_outputs_that_mix_items_keep_whole_batches():
    # a forward whose outputs depend on the other items of the batch (centred over the batch): a
    # cut batch would change them, so the held-out scoring runs whole batches and counts half
    class Centred(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(6, 12), nn.Linear(12, 2)

        def forward(self, x):
            h = self.b(torch.relu(self.a(x)))
            return h - h.mean(0, keepdim=True)

    torch.manual_seed(0)
    x = torch.randn(4, 6)
    program = TorchProgram(Centred().eval(), (x,))
    parity = [np.arange(4) % 2]
    assert program.take((( x,), {}), parity[0] == 0) is not None  # it can be cut ...
    assert fold_batches(program, [((x,), {})], parity) is None  # ... but the cut is not the same rows
