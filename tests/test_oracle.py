"""What the exactness oracle compares: NaN and inf are values (a pruned model that emits NaN where
the masked original does not is wrong, and a plain maximum, Python's ``max(0.0, nan)`` being 0.0,
would pass it), and a softmax output is compared at its logits."""
from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import graphprune as gp
from graphprune.oracle import max_abs_diff, scaled_diff
from graphprune.program.torch_program import TorchProgram


def test_nan_in_one_output_only_is_an_infinite_difference():
    want = [np.zeros((2, 3)), np.ones(4)]
    got = [np.zeros((2, 3)), np.ones(4)]
    got[1][2] = np.nan
    assert max_abs_diff(got, want) == math.inf and scaled_diff(got, want) == math.inf
    # the first output matching exactly must not hide the second one's NaN (the order max() saw)
    assert max_abs_diff(got[::-1], want[::-1]) == math.inf


def test_nan_or_inf_at_the_same_places_is_no_difference():
    want = [np.array([np.nan, 1.0, np.inf, -np.inf])]
    assert max_abs_diff([want[0].copy()], want) == 0.0 and scaled_diff([want[0].copy()], want) == 0.0
    # the finite part still counts, scaled by the wanted output's largest finite value (4.0), not by inf
    got = [np.array([np.nan, 6.0, np.inf, -np.inf])]
    want = [np.array([np.nan, 4.0, np.inf, -np.inf])]
    assert max_abs_diff(got, want) == 2.0 and scaled_diff(got, want) == 0.5
    assert max_abs_diff([np.array([np.inf])], [np.array([-np.inf])]) == math.inf
    assert max_abs_diff([np.array([np.inf])], [np.array([3.0])]) == math.inf


def _mlp() -> tuple[nn.Module, tuple]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4)).eval(), (torch.randn(5, 6),)


def test_oracle_fails_a_pruned_model_that_emits_nan(monkeypatch):
    model, args = _mlp()
    g = gp.trace(model, args)
    plan = gp.plan(g, model, ratio=0.5)
    assert gp.verify(model, args, plan, g).passed  # the honest prune passes

    apply = TorchProgram.apply

    def nan_apply(self, *a, **k):
        pruned = apply(self, *a, **k)
        run = pruned.run

        def nan_run(batch, *ra, **rk):
            out = run(batch, *ra, **rk)
            out[0][0, 0] = np.nan  # one NaN in an otherwise exact output
            return out

        pruned.run = nan_run
        return pruned

    monkeypatch.setattr(TorchProgram, "apply", nan_apply)
    report = gp.verify(model, args, plan, g)
    assert not report.passed and report.max_abs_diff == math.inf, str(report)
    assert "FAIL" in str(report)


class _LogHead(nn.Module):
    """log of a signed output: NaN at the negative entries, in the original and pruned alike."""

    def __init__(self):
        super().__init__()
        self.body = _mlp()[0]

    def forward(self, x):
        return torch.log(self.body(x))


def test_oracle_passes_nan_that_the_masked_original_has_too():
    model, args = _LogHead().eval(), _mlp()[1]
    assert torch.isnan(model(*args)).any()  # the case is real: the original emits NaN
    g = gp.trace(model, args)
    plan = gp.plan(g, model, ratio=0.5)
    report = gp.verify(model, args, plan, g)
    assert plan.pruned and report.checked_groups and report.passed, str(report)


def _softmax_head(path, scale: float, mask: float = 0.0, head: str = "Softmax", offset: float = 0.0) -> None:
    """x -> MatMul(8x32) -> Relu -> MatMul(32x5) * scale (+ ``offset``, + ``mask`` on the last class)
    -> ``head``: larger logits saturate the softmax, where float32 rounding of near-tied logits moves
    probabilities a lot; a mask of -1e9 is how exporters spell a class that is never chosen."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 32)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((32, 5)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array(scale, dtype=np.float32), "s"),
             numpy_helper.from_array(np.array([0, 0, 0, 0, mask], dtype=np.float32) + offset, "m")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["z"], name="mm2"),
             helper.make_node("Mul", ["z", "s"], ["zs"], name="scale"),
             helper.make_node("Add", ["zs", "m"], ["logits"], name="mask"),
             helper.make_node(head, ["logits"], ["p"], name="head", **({"axis": -1} if head == "Softmax" else {}))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, [4, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_a_softmax_output_is_compared_at_its_logits(tmp_path):
    """Exact or not is decided on the logits: a softmax is a function of them, and near-tied
    logits turn float32 rounding into probability differences far above the tolerance."""
    src = tmp_path / "head.onnx"
    _softmax_head(src, 1.0)
    report = gp.prune_onnx(src, tmp_path / "out.onnx", ratio=0.5, round_to=1, measure_latency=False)
    assert report.oracle.passed and report.oracle.checked_groups and report.oracle.logits == ["logits"]
    assert "compared at their logits (logits)" in str(report.oracle)
    assert report.to_dict()["oracle"]["logits"] == ["logits"]


@pytest.mark.parametrize("mask", [0.0, -1e9, float(np.finfo(np.float32).min)])
def test_logits_that_really_differ_still_fail(tmp_path, monkeypatch, mask):
    """The view replaces what is compared, not whether: a wrong logit in the pruned model fails,
    also beside a -1e9 or float-min mask (the logits are shifted and floored as a softmax sees them,
    so a huge masked value does not set the scale the error is divided by)."""
    src = tmp_path / "head.onnx"
    _softmax_head(src, 1.0, mask)
    _off_by_a_little(monkeypatch, 0)  # one class's logit: a shift of all of them would change no probability
    with pytest.raises(gp.errors.GraphpruneError, match="oracle FAIL"):
        gp.prune_onnx(src, tmp_path / "out.onnx", ratio=0.5, round_to=1, measure_latency=False)
    assert not (tmp_path / "out.onnx").exists()


def _off_by_a_little(monkeypatch, cls: int) -> None:
    """The pruned model's logit of class ``cls`` 1e-2 off, as a wrong rewrite would leave it."""
    from graphprune.program.onnx_program import OnnxProgram

    apply = OnnxProgram.apply

    def pruned_off(self, *a, **k):
        pruned = apply(self, *a, **k)
        run = pruned.run

        def shifted(batch, masks=None, capture=(), on_capture=None, outputs=True):
            def on(name, t):
                if name == "logits":
                    t = t.clone()
                    t[..., cls] += 1e-2
                on_capture(name, t)
            return run(batch, masks, capture, on if on_capture else None, outputs)

        pruned.run = shifted
        return pruned

    monkeypatch.setattr(OnnxProgram, "apply", pruned_off)


def test_a_sigmoid_output_is_compared_at_its_logits(tmp_path, monkeypatch):
    """A saturated sigmoid (logits near +30: slope ~1e-13) passes a logit error of any size within
    the tolerance, so a sigmoid output is compared at its logits: the exact prune passes, a logit
    1e-2 off fails (through the sigmoid it would be 1e-15 off)."""
    src = tmp_path / "head.onnx"
    _softmax_head(src, 1.0, head="Sigmoid", offset=30.0)
    report = gp.prune_onnx(src, tmp_path / "out.onnx", ratio=0.5, round_to=1, measure_latency=False)
    assert report.oracle.passed and report.oracle.checked_groups and report.oracle.logits == ["logits"]
    assert "softmax/sigmoid output(s) compared at their logits (logits)" in str(report.oracle)
    _off_by_a_little(monkeypatch, 4)
    with pytest.raises(gp.errors.GraphpruneError, match="oracle FAIL"):
        gp.prune_onnx(src, tmp_path / "bad.onnx", ratio=0.5, round_to=1, measure_latency=False)
    assert not (tmp_path / "bad.onnx").exists()


def test_a_prune_with_nothing_exact_to_compare_says_so_not_pass():
    """Every pruned group crosses a LayerNorm (its mean and variance mix the channels: not oracle-exact),
    so the oracle has nothing to compare. It said "oracle PASS ... over 0 exact group(s)" (a new user's
    ConvNeXtV2, whose GRN mixes channels the same way)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4)).eval()
    _, report = gp.prune(model, (torch.randn(3, 8),), ratio=0.5, round_to=1, runtime=None, verify=True)
    assert report.oracle.inexact_groups and not report.oracle.checked_groups
    text = str(report.oracle)
    assert text.startswith("oracle NOT CHECKED:") and "not oracle-exact, not checked" in text and "PASS" not in text


def test_a_prune_with_some_groups_unchecked_is_partial_not_pass():
    """One group is exact and checked, the other crosses a LayerNorm and is not: the verdict said PASS
    (a new user's Data2Vec-audio: 2 groups checked of 19 cut, outputs 5.77 apart on other inputs)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16),
                                torch.nn.LayerNorm(16), torch.nn.Linear(16, 4)).eval()
    _, report = gp.prune(model, (torch.randn(3, 8),), ratio=0.5, round_to=1, runtime=None, verify=True,
                         targets=("ffn", "latent", "hidden"))
    oracle = report.oracle
    assert oracle.passed and oracle.checked_groups and oracle.inexact_groups
    assert oracle.verdict == "PARTIAL" and str(oracle).startswith("oracle PARTIAL:")
    assert f"{len(oracle.inexact_groups)} pruned group(s) not oracle-exact, not checked" in str(oracle)


def test_without_the_oracle_the_report_still_names_the_groups_that_are_not_exact():
    """A user's CHGNet default call cut two groups across LayerNorms and its report said nothing of it:
    only verify=True did. The report names them whether or not the oracle ran (and once where it did)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16),
                                torch.nn.LayerNorm(16), torch.nn.Linear(16, 4)).eval()
    _, report = gp.prune(model, (torch.randn(3, 8),), ratio=0.5, round_to=1, runtime=None, targets=("ffn", "latent", "hidden"))
    assert report.oracle is None and [n for _, n in report.inexact] == [1]
    assert "not oracle-exact: 1 pruned group(s) cross ops that mix channels" in str(report)
    assert report.to_dict()["inexact"][0]["groups"] == 1
    _, checked = gp.prune(model, (torch.randn(3, 8),), ratio=0.5, round_to=1, runtime=None, targets=("ffn", "latent", "hidden"),
                          verify=True)
    assert "not oracle-exact: 1" not in str(checked) and "1 pruned group(s) not oracle-exact" in str(checked)
    plain = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    _, exact = gp.prune(plain, (torch.randn(3, 8),), ratio=0.5, round_to=1, runtime=None)
    assert exact.params_after < exact.params_before and exact.inexact == [] and "not oracle-exact" not in str(exact)


def test_a_plan_verified_on_another_trace_says_so():
    """A Mamba plan verified at another sequence length failed with "no group with id 1203": its scan is
    unrolled per token, so a trace at another length has other group ids."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)).eval()
    x = (torch.randn(2, 4),)
    elsewhere = gp.PrunePlan(pruned={10**6: [0, 1]}, sizes={10**6: 16})  # a group id this trace does not have
    with pytest.raises(gp.PlanError, match=r"the plan does not fit this trace: group 1000000 \(size 16\) is not in it"
                                           r"\. A plan holds the group ids of the trace it was made on"):
        gp.verify(model, x, elsewhere)


class _TracedPathDiffers(torch.nn.Module):
    """The forward's path depends on an integer input's values in eager mode, while the traced path (export's
    flags set) assumes the example's: as transformers' SigLIP2 and PaliGemma do."""

    def __init__(self, always: bool = False) -> None:
        super().__init__()
        self.a, self.b, self.always = torch.nn.Linear(8, 16), torch.nn.Linear(16, 4), always

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        if not torch.compiler.is_exporting():  # eager: gated by the ids' values; traced: the gate is taken as open
            h = h * (ids[:, 1:] >= 5).float() * (0.5 if self.always else 1.0)
        return self.b(h)


def _path_args() -> tuple:
    torch.manual_seed(0)
    return torch.randn(4, 8), torch.tensor([[0, 5]] * 4)


def test_random_integers_that_leave_the_traced_path_keep_the_example_ones():
    # random ids in [0, 5] close the gate for most rows, where the trace keeps it open: the oracle compared the
    # pruned model's path with another one and said FAIL for a right plan (SigLIP2's patch grids)
    model, args = _TracedPathDiffers().eval(), _path_args()
    program = TorchProgram(model, args)
    batches = program.oracle_inputs(2)
    assert all(torch.equal(b[0][1], args[1]) for b in batches) and not torch.equal(batches[1][0][0], args[0])
    _, report = gp.prune(model, args, ratio=0.5, round_to=1, runtime=None, verify=True)
    assert report.oracle.verdict == "PASS", report.oracle


def test_a_fail_where_the_trace_is_not_the_model_says_so():
    # PaliGemma under transformers' tracing branch: the trace is 0.038 apart from the model before anything is cut
    model, args = _TracedPathDiffers(always=True).eval(), _path_args()
    with pytest.raises(gp.errors.RewriteError, match="The traced graph itself, nothing pruned, is .* apart from the model"):
        gp.prune(model, args, ratio=0.5, round_to=1, runtime=None, verify=True)


def test_calibration_on_a_trace_that_is_not_the_model_warns():
    # with verify=False nothing else would say that the statistics and repairs were taken on another path
    model, args = _TracedPathDiffers(always=True).eval(), _path_args()
    with pytest.warns(gp.PruneWarning, match="the traced graph, nothing pruned, is .* apart from the model on the first"):
        gp.prune(model, args, ratio=0.5, round_to=1, runtime=None, calib=[args, args])
    with warnings.catch_warnings():
        warnings.simplefilter("error", gp.PruneWarning)  # the same model on its traced path says nothing of it
        model = _TracedPathDiffers().eval()
        gp.prune(model, args, ratio=0.5, round_to=1, runtime=None, calib=[args, args], allocation="uniform")


def test_outputs_that_are_all_zero_are_not_checked_not_passed():
    """A head initialised at zero (a fresh ControlNet's output convolutions) makes every output 0 with or
    without the pruned channels: the comparison says nothing, and the verdict is NOT CHECKED."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    torch.nn.init.zeros_(model[2].weight)
    torch.nn.init.zeros_(model[2].bias)
    args = (torch.randn(2, 4),)
    _, report = gp.prune(model, args, ratio=0.25, runtime=None, verify=True)
    assert report.oracle.passed and report.oracle.verdict == "NOT CHECKED"
    assert "every output is zero" in str(report.oracle)
    torch.nn.init.normal_(model[2].weight)  # the same prune of a head that reads the channels is checked
    _, report = gp.prune(model, args, ratio=0.25, runtime=None, verify=True)
    assert report.oracle.verdict == "PASS"


class _SizedFromInexact(nn.Module):
    """A buffer sized from a pruned activation's shape (traced as a literal), beside a mean over the channels
    that makes the pruned group inexact: the oracle can run no pruned group, and before, verify=True returned
    a model that failed on its own example input."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = self.a(x)
        return self.b(torch.zeros(h.shape) + h.mean(1, keepdim=True))


def test_verify_never_returns_a_model_that_fails_on_its_example_inputs():
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(gp.RewriteError, match="no longer runs on the example inputs"):
        gp.prune(_SizedFromInexact().eval(), (x,), ratio=0.5, round_to=1, runtime=None, verify=True)


class _WritesItsBuffer(nn.Module):
    """A forward that writes into part of its own buffer (a cache: layer x slot x channel)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)
        self.register_buffer("mem", torch.randn(3, 4, 16))

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        self.mem[1, :2] = h  # select, slice, copy_: slots 0 and 1 of layer 1 only
        return self.fc2(self.mem[1, :2] * 1.0)


def test_the_oracle_leaves_a_buffer_the_forward_writes_into_as_the_forward_would():
    """The masked replay masks views a write goes through in place only where the replay made the tensor: masked in
    place, views of the model's own buffer zeroed slots the forward never writes (a review of 2b10211)."""
    model, x = _WritesItsBuffer().eval(), torch.randn(2, 8)
    graph = gp.trace(model, (x,))
    plan = gp.plan(graph, model, ratio=0.5)
    with torch.no_grad():
        model(x)
    before = model.mem.clone()
    gp.verify(model, (x,), plan, graph)
    changed = model.mem != before
    assert not changed[[0, 2]].any() and not changed[1, 2:].any()  # never written by the forward: untouched


def test_a_proof_that_covers_no_cut_group_says_so():
    """SuDORMRF's every group sits behind GroupNorm(1): verify=True returned NOT CHECKED with no warning."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv1d(2, 16, 3), torch.nn.GroupNorm(1, 16), torch.nn.Conv1d(16, 2, 1)).eval()
    with pytest.warns(gp.PruneWarning, match=r"the oracle checked none of the 1 cut group\(s\): each crosses a normal"):
        _, report = gp.prune(model, (torch.randn(2, 2, 20),), ratio=0.5, round_to=1, runtime=None, verify=True)
    assert report.oracle.verdict == "NOT CHECKED"


class _Cancels(torch.nn.Module):
    """Outputs that are small differences of large activations: float32 rounds them more than the atol."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 64, 3, padding=1)
        self.a, self.b = torch.nn.Conv2d(64, 8, 3, padding=1), torch.nn.Conv2d(64, 8, 3, padding=1)
        with torch.no_grad():
            self.stem.weight.mul_(30)
            self.a.weight.mul_(30)
            self.b.weight.copy_(self.a.weight + 1e-3 * torch.randn_like(self.a.weight))
            self.b.bias.copy_(self.a.bias)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        return self.a(h) - self.b(h)


def test_a_gap_within_the_models_own_rounding_passes_and_a_wrong_plan_still_fails():
    """A right plan on such a model was refused with an oracle FAIL (SKNet-50: 1.3e-5 against an atol of 1e-5; here
    ~3e-4), where float64 agrees to 1e-12. After a FAIL the model is run against a float64 copy: a gap within 10x
    that rounding passes, and says so. A plan the rewrite gets wrong still fails: its gap is the output's size."""
    from graphprune.oracle import run_oracle

    torch.manual_seed(0)
    model, x = _Cancels().eval(), torch.randn(1, 3, 32, 32)
    pruned, report = gp.prune(copy.deepcopy(model), (x,), verify=True, measure_latency=False, round_to=1)
    assert report.oracle.verdict == "PASS" and report.oracle.float_noise is not None
    assert report.oracle.atol < report.oracle.scaled_diff <= 10 * report.oracle.float_noise
    assert "own float32 rounding" in str(report.oracle)

    program = TorchProgram(model, (x,))
    plan = gp.plan(program.graph(), model, 0.5, round_to=1)
    wrong = TorchProgram(model, (x,))
    wrong.apply = lambda p, *a, **k: TorchProgram(_Zeroed(program.apply(p).model), (x,))  # a rewrite gone wrong
    bad = run_oracle(wrong, plan)
    assert bad.verdict == "FAIL" and bad.scaled_diff > 10 * (bad.float_noise or 0.0)


class _Zeroed(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) * 0.5


class _FloatIndices(torch.nn.Module):
    """gluonts' WaveNet: bin indices passed as a float tensor, cast for an embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(64, 16)
        self.ff = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64))

    def forward(self, target):
        return self.ff(self.emb(target.long()))


def test_floats_holding_whole_numbers_are_drawn_as_whole_numbers_in_their_range():
    """The oracle drew Gaussian floats for them: negative indices, and "the pruned model fails on the oracle's inputs:
    IndexError" for a right prune that the original failed on just the same."""
    torch.manual_seed(0)
    x = torch.randint(0, 64, (1, 20)).float()
    _, report = gp.prune(_FloatIndices().eval(), (x,), ratio=0.5, verify=True, measure_latency=False)
    assert report.oracle.verdict == "PASS"
    drawn = gp.trace(_FloatIndices().eval(), (x,)).program.oracle_inputs(2)[1:]
    for (args, _) in drawn:
        assert args[0].dtype == torch.float32 and torch.equal(args[0], args[0].round())
        assert 0 <= args[0].min() and args[0].max() <= 63


class _Sampling(torch.nn.Module):
    """VITS: noise drawn in the forward, here on the residual stream or on the FFN's units."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where, self.up, self.down = where, torch.nn.Linear(64, 128), torch.nn.Linear(128, 64)

    def forward(self, x):
        h = torch.relu(self.up(x))
        if self.where == "units":
            h = h + 0.1 * torch.randn_like(h)
        x = x + self.down(h)
        return x + 0.1 * torch.randn_like(x) if self.where == "stream" else x


def test_a_sampling_forward_draws_alike_in_both_models_or_fails_saying_so():
    """The oracle's float64 twin drew other noise, so the tolerance grew with it and a wrong model passed (VITS:
    PARTIAL at max |diff| 313). Each oracle run now draws from one seed: noise at shapes the plan leaves alone is
    the same in both, and noise over the cut units fails, saying that the draws may be why."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 64)
    _, report = gp.prune(_Sampling("stream").eval(), (x,), ratio=0.5, verify=True, measure_latency=False)
    assert report.oracle.verdict == "PASS" and report.oracle.max_abs_diff == 0.0 and report.oracle.float_noise is None
    with pytest.raises(gp.RewriteError, match=r"oracle FAIL.*draws random numbers \(two runs at other seeds differ\)"):
        gp.prune(_Sampling("units").eval(), (x,), ratio=0.5, verify=True, measure_latency=False)


class _AdditiveMask(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.o = torch.nn.Linear(16, 32), torch.nn.Linear(16, 32), torch.nn.Linear(16, 16)
        self.up, self.down = torch.nn.Linear(16, 64), torch.nn.Linear(64, 16)

    def forward(self, x, bias):
        x = x + self.o(torch.softmax(self.q(x) @ self.k(x).transpose(1, 2) + bias, -1) @ x)
        return x + self.down(torch.relu(self.up(x)))


@pytest.mark.parametrize("fill", [float("-inf"), torch.finfo(torch.float32).min])
def test_an_additive_mask_of_whole_numbers_is_no_index(fill):
    """0 and -inf (or the float's lowest) are whole numbers too: drawing them as integers overflowed (review)."""
    torch.manual_seed(0)
    bias = torch.zeros(2, 6, 6).masked_fill(torch.ones(6, 6).triu(1).bool(), fill)
    _, report = gp.prune(_AdditiveMask().eval(), (torch.randn(2, 6, 16), bias), ratio=0.5, verify=True,
                         measure_latency=False)
    assert report.oracle.verdict == "PASS"


class _ZeroOutOfLogSigma(nn.Module):
    """k-diffusion's denoiser: features scaled by log(sigma), through a zero-initialised output layer."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.out = nn.Linear(6, 32), nn.Linear(32, 3)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x, sigma):
        return self.out(torch.relu(self.up(x)) * sigma.log()[:, None])


def test_outputs_that_are_zero_or_nan_everywhere_are_not_checked_not_passed():
    """The oracle drew sigma from a Gaussian: log of the negative draws made every output NaN on both sides, the
    NaNs counted as a signal, and a comparison of nothing said PASS. A strictly positive input is now drawn
    within the example's range, and NaNs that match are no signal."""
    torch.manual_seed(0)
    model, args = _ZeroOutOfLogSigma().eval(), (torch.randn(4, 6), torch.tensor([0.2, 0.5, 1.0, 3.0]))
    program = TorchProgram(model, args)
    sigmas = [b[0][1] for b in program.oracle_inputs(3)[1:]]
    assert all(bool((s >= 0.2).all() and (s <= 3.0).all()) for s in sigmas), sigmas
    g = gp.trace(model, args)
    report = gp.verify(model, args, gp.plan(g, model, ratio=0.5), g)
    assert report.verdict == "NOT CHECKED" and "every output is zero" in str(report), str(report)
    bad = (torch.randn(4, 6), -torch.tensor([0.2, 0.5, 1.0, 3.0]))  # every output NaN, at the example too
    g = gp.trace(model, bad)
    report = gp.verify(model, bad, gp.plan(g, model, ratio=0.5), g)
    assert report.verdict == "NOT CHECKED" and "zero, NaN or inf" in str(report), str(report)


class _SignHead(torch.nn.Module):
    """A step on computed values (as afis' minutiae net's atan2 and max-pool suppression): rounding flips it."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(3, 16, 3), torch.nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = self.b(torch.relu(self.a(x)))
        return y * torch.sign(y) + (y > 0.5).float()


def test_a_fail_through_steps_on_computed_values_says_rounding_may_flip_them():
    """afis' LEADER (tf2onnx) failed the oracle by 0.036 with nothing saying that its outputs pass through steps,
    where a reordered sum flips a value by the whole step: the FAIL names them and what to do."""
    from graphprune.oracle import OracleReport, step_sites
    graph = gp.trace(_SignHead().eval(), (torch.randn(1, 3, 8, 8),))
    sites = step_sites(graph)
    assert len(sites) == 2 and sites[0].startswith("sign at ") and sites[1].startswith("gt at ")
    failed = OracleReport(0.036, 1e-4, [0], steps=sites)
    assert failed.verdict == "FAIL" and "has steps on computed values (sign at " in str(failed)
    assert "verify=False" in str(failed) and "ignore=" in str(failed)
    assert "steps" not in str(OracleReport(1e-6, 1e-4, [0], steps=sites))  # a PASS needs no excuse
