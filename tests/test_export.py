"""export_onnx: validated, dynamic batch, deterministic, atomic."""
from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

import graphprune as gp
from graphprune.frontends.torch_export import export_program
from graphprune.io.onnx_export import _attention_fallback
from graphprune.zoo import build


@pytest.fixture(scope="module")
def pruned_cnn():
    model, args = build("mobilenetv2")
    model, _ = gp.prune(model, args, ratio=0.5)
    return model, args


def test_export_matches_pytorch_with_dynamic_batch(pruned_cnn, tmp_path):
    model, args = pruned_cnn
    report = gp.export_onnx(model, args, tmp_path / "slim.onnx")
    assert report.max_abs_diff <= 1e-4
    sess = ort.InferenceSession(str(tmp_path / "slim.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(3, *args[0].shape[1:])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-4


def test_export_is_deterministic(pruned_cnn, tmp_path):
    model, args = pruned_cnn
    gp.export_onnx(model, args, tmp_path / "a.onnx")
    gp.export_onnx(model, args, tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_failed_check_leaves_no_file(pruned_cnn, tmp_path):
    model, args = pruned_cnn
    with pytest.raises(gp.GraphpruneError, match=r"nothing was written.*pass export_onnx\(\.\.\., atol=\) above it"):
        gp.export_onnx(model, args, tmp_path / "never.onnx", atol=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_more_dims_than_the_batch_can_be_dynamic(tmp_path):
    """A pitch estimator exported at 128 frames refused 200 in onnxruntime ('index: 1 Got: 200 Expected: 128');
    dynamic= names the time axis, so the file runs at any length, as the PyTorch model does."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv1d(4, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv1d(8, 2, 1)).eval()
    path = tmp_path / "t.onnx"
    gp.export_onnx(model, (torch.randn(1, 4, 128),), path, dynamic={0: {2: "time"}})
    x = torch.randn(3, 4, 200)
    sess = ort.InferenceSession(str(path))
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert np.allclose(got, model(x).numpy(), atol=1e-5)
    with pytest.raises(gp.GraphpruneError, match="has 3 dims"):
        gp.export_onnx(model, (torch.randn(1, 4, 128),), tmp_path / "u.onnx", dynamic={0: {5: "time"}})
    with pytest.raises(gp.GraphpruneError, match=r"input\(s\) \['x'\]"):
        gp.export_onnx(model, (torch.randn(1, 4, 128),), tmp_path / "u.onnx", dynamic={"x": {2: "time"}})
    assert not (tmp_path / "u.onnx").exists()


class _Masked(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 3)

    def forward(self, x, mask=None):
        return self.proj(x) * mask.unsqueeze(-1)


def test_dynamic_dims_of_positional_and_keyword_inputs_together_or_a_clear_refusal(tmp_path):
    """A keyword input beside positional ones lost its dynamic dims (the export fell back to static with a
    note); a dim the model fixes (a Linear over time) came out static without a word."""
    torch.manual_seed(0)
    model, path = _Masked().eval(), tmp_path / "m.onnx"
    x, mask = torch.randn(1, 6, 4), torch.ones(1, 6)
    gp.export_onnx(model, (x,), path, kwargs={"mask": mask}, dynamic={0: {1: "time"}, "mask": {1: "time"}})
    sess = ort.InferenceSession(str(path))
    x2, m2 = torch.randn(2, 9, 4), (torch.rand(2, 9) > 0.5).float()
    got = sess.run(None, dict(zip([i.name for i in sess.get_inputs()], (x2.numpy(), m2.numpy()))))[0]
    with torch.no_grad():
        assert np.allclose(got, model(x2, mask=m2).numpy(), atol=1e-5)
    over_time = torch.nn.Sequential(torch.nn.Linear(128, 8)).eval()  # (batch, features, time=128): time is fixed
    with pytest.raises(gp.GraphpruneError, match=r"input 0 dim 2 came out fixed at 128 .*nothing was written"):
        gp.export_onnx(over_time, (torch.randn(1, 4, 128),), tmp_path / "t.onnx", dynamic={0: {2: "time"}})
    assert not (tmp_path / "t.onnx").exists()


class _RoundsAScale(torch.nn.Module):
    """Python's round() on a tensor's value: torch.export keeps it, the ONNX translator has no function for it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)
        self.register_buffer("scale", torch.tensor(1.7))

    def forward(self, x):
        return self.fc(x) * round(self.scale.item() * 3)


def test_a_failed_export_names_its_cause_without_colour_codes(tmp_path):
    """torch's ConversionError starts with a header ("Failed to convert ... step 3/3 ... Next steps:",
    coloured); the op it failed on is two causes down. The message kept only the header (PESTO's CQT)."""
    with pytest.raises(gp.GraphpruneError) as got:
        gp.export_onnx(_RoundsAScale().eval(), (torch.randn(2, 4),), tmp_path / "m.onnx")
    text = str(got.value)
    assert "\x1b[" not in text and "Next steps" not in text
    assert "cause: DispatchError: No ONNX function found for <built-in function round>" in text
    assert not (tmp_path / "m.onnx").exists()


class _FailsWithACause(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, x):
        try:
            return self._lookup(x)
        except KeyError as exc:
            raise RuntimeError("while building the positional table") from exc

    def _lookup(self, x):
        raise KeyError("rope_scaling")


def test_a_failed_torch_export_names_the_innermost_cause():
    """torch.export's own first line is often a wrapper; the TraceError also names the cause it wraps,
    as Python prints the chain (it used to keep the first line alone)."""
    with pytest.raises(gp.TraceError) as got:
        export_program(_FailsWithACause(), (torch.randn(2, 4),))
    text = str(got.value)
    assert "while building the positional table" in text
    assert "cause: KeyError: 'rope_scaling'" in text, text


class _RefusesItsOwnAttention(torch.nn.Module):
    """DETR's switch in small: its config says "sdpa", and setting "sdpa" raises (its ResNet backbone is eager only)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)
        self.config = type("Config", (), {"_attn_implementation": "sdpa"})()
        self.asked: list[str] = []

    def set_attn_implementation(self, impl: str) -> None:
        self.asked.append(impl)
        if impl == "sdpa":
            raise ValueError("ResNetBackbone does not support an attention implementation through torch's sdpa")
        self.config._attn_implementation = impl

    def forward(self, x):
        return self.fc(x)


def test_the_attention_switch_is_left_alone_until_eager_is_needed(tmp_path):
    """export_onnx set the model's own implementation back before its first try, which DETR refuses; and
    where eager was needed, setting it back raised the same raw ValueError."""
    model = _RefusesItsOwnAttention().eval()
    report = gp.export_onnx(model, (torch.randn(2, 4),), tmp_path / "m.onnx")
    assert report.max_abs_diff < 1e-5 and model.asked == [] and model.config._attn_implementation == "sdpa"
    with _attention_fallback(model) as use:
        use(True)
        assert model.config._attn_implementation == "eager"
        use(False)  # the static-batch attempt after an eager one
    assert model.asked == ["eager", "sdpa"] and model.config._attn_implementation == "sdpa"


class _WithIds(torch.nn.Module):
    """A batch of features beside a table of positions that has no batch (Flux's img_ids / txt_ids)."""

    def __init__(self):
        super().__init__()
        self.lin, self.pos = torch.nn.Linear(4, 6), torch.nn.Linear(2, 6)

    def forward(self, x, ids):
        return self.lin(x) + self.pos(ids).mean(0)


def test_an_input_without_a_batch_leaves_the_others_dynamic(tmp_path):
    """Only inputs whose dim 0 is the example's batch get the batch dim: a batch dim on ids (5, 2) beside
    x (1, 4) made torch.export fail and the whole file fall back to a fixed batch."""
    model, args = _WithIds().eval(), (torch.randn(1, 4), torch.randn(5, 2))
    report = gp.export_onnx(model, args, tmp_path / "ids.onnx")
    assert report.dynamic_batch, report
    sess = ort.InferenceSession(str(tmp_path / "ids.onnx"), providers=["CPUExecutionProvider"])
    x, ids = torch.randn(3, 4), args[1]
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy(), sess.get_inputs()[1].name: ids.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - model(x, ids).numpy()).max() <= 1e-5


class _SqueezeAndDict(torch.nn.Module):
    """PixArt's tail: ``squeeze(1)`` of a dim that is not 1 (a no-op in torch, which the exporter still wrote
    as an ONNX Squeeze the checker refuses), and a dict of optional inputs beside the tensors."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 6)

    def forward(self, x, cond=None):
        y = self.lin(x).squeeze(1)
        return y if cond is None or cond.get("scale") is None else y * cond["scale"]


def test_a_squeeze_of_a_wider_dim_and_a_dict_input_export_with_a_dynamic_batch(tmp_path):
    model, x = _SqueezeAndDict().eval(), torch.randn(1, 5, 4)
    report = gp.export_onnx(model, (x,), tmp_path / "sq.onnx", {"cond": {"scale": None}})
    assert report.dynamic_batch and report.max_abs_diff <= 1e-5, report
    sess = ort.InferenceSession(str(tmp_path / "sq.onnx"), providers=["CPUExecutionProvider"])
    x3 = torch.randn(3, 5, 4)
    got = sess.run(None, {sess.get_inputs()[0].name: x3.numpy()})[0]
    with torch.no_grad():
        assert got.shape == (3, 5, 6) and np.abs(got - model(x3).numpy()).max() <= 1e-5


class _TwoRows(torch.nn.Module):
    """A forward tied to two rows whatever the batch: no batch can be dynamic."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.register_buffer("rows", torch.randn(2, 4))

    def forward(self, x):
        return self.lin(x) + self.rows


def test_a_batch_no_export_frees_keeps_the_file_of_the_example_and_says_so(tmp_path):
    """At a batch of 1 the exporter fixes it; the export again at 2 fixes it at 2: that file is not taken
    (it would refuse the user's own example) and the report says the batch is fixed, with a warning."""
    model, x = _TwoRows().eval(), torch.randn(1, 4)
    with pytest.warns(gp.PruneWarning, match="fixed batch"):
        report = gp.export_onnx(model, (x,), tmp_path / "rows.onnx")
    assert not report.dynamic_batch and sorted(p.name for p in tmp_path.iterdir()) == ["rows.onnx"]
    sess = ort.InferenceSession(str(tmp_path / "rows.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - model(x).numpy()).max() <= 1e-5


class _DictForward(torch.nn.Module):
    """neuralforecast's models take one dict of tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(48, 64), torch.nn.Linear(64, 12)

    def forward(self, windows_batch):
        return self.fc2(torch.relu(self.fc1(windows_batch["insample_y"].squeeze(-1))))


def test_a_forward_taking_one_dict_exports_as_it_prunes(tmp_path):
    """The dict prune() took was read by torch.onnx.export as keyword arguments (a missing argument), and passed as
    kwargs= its tensors were never fed to onnxruntime (a raw ValueError)."""
    batch = {"insample_y": torch.randn(2, 48, 1), "insample_mask": torch.ones(2, 48, 1)}
    model, _ = gp.prune(_DictForward().eval(), (batch,), ratio=0.5, measure_latency=False, runtime=None)
    for args, kwargs in (((batch,), None), ((), {"windows_batch": batch})):
        report = gp.export_onnx(model, args, tmp_path / "m.onnx", kwargs=kwargs)
        assert report.max_abs_diff < 1e-5 and report.dynamic_batch
        session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
        assert session.run(None, {i.name: np.ones((3, 48, 1), np.float32) for i in session.get_inputs()})[0].shape == (3, 12)


class _BoolEinsum(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = torch.nn.Linear(16, 16)

    def forward(self, x, ids):
        mask = torch.einsum("qb,bt->qbt", ids[:, None] == ids[None, :], torch.ones(x.shape[0], x.shape[1], dtype=torch.bool))
        return torch.einsum("qtd,btd->qbt", self.q(x), x).masked_fill(~mask, -1e4)


def test_a_file_onnxs_checker_rejects_is_refused_naming_the_op(tmp_path):
    """Chronos-2's einsum of boolean masks: onnx's raw InferenceError escaped, and the file was left behind."""
    with pytest.raises(gp.GraphpruneError, match=r"checker rejects.*Einsum.*cast them to float"):
        gp.export_onnx(_BoolEinsum().eval(), (torch.randn(2, 8, 16), torch.tensor([0, 0])), tmp_path / "m.onnx")
    assert not any(tmp_path.iterdir())


def test_a_model_returning_its_cache_is_told_to_export_without_it(tmp_path):
    """Chronos' T5 returned an EncoderDecoderCache, which torch's exporter cannot flatten: its error said to register a
    pytree, not that the model takes use_cache=False."""
    import transformers
    cfg = transformers.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                                decoder_start_token_id=0)
    torch.manual_seed(0)
    model, ids = transformers.T5ForConditionalGeneration(cfg).eval(), torch.randint(0, 64, (1, 8))
    with pytest.raises(gp.GraphpruneError, match=r"kwargs=\{'use_cache': False\}"):
        gp.export_onnx(model, (), tmp_path / "t5.onnx", kwargs={"input_ids": ids, "decoder_input_ids": ids})
    report = gp.export_onnx(model, (), tmp_path / "t5.onnx", kwargs={"input_ids": ids, "decoder_input_ids": ids,
                                                                      "use_cache": False})
    assert report.max_abs_diff < 1e-4


class _Bfloat16Bias(torch.nn.Module):
    """Falcon's ALiBi: a bias computed in bfloat16, for which onnxruntime's CPU provider has no Mul kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x, mask):
        return self.lin(x) + (mask.bfloat16() * x.sum(-1).bfloat16()).float()[..., None]


def test_a_file_onnxruntime_cannot_run_is_refused_saying_why(tmp_path):
    """onnxruntime's own NotImplemented escaped export_onnx raw (not a GraphpruneError), from Falcon with ALiBi."""
    args = (torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.long))
    with pytest.raises(gp.GraphpruneError, match=r"onnxruntime cannot run .* for _Bfloat16Bias: NotImplemented.*Mul.*"
                                                 r"bfloat16 or float16"):
        gp.export_onnx(_Bfloat16Bias().eval(), args, tmp_path / "m.onnx")
    assert not any(tmp_path.iterdir())


class _VarArgs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 16), torch.nn.Linear(16, 2)

    def forward(self, *xs):
        return self.b(torch.relu(self.a(xs[0] + xs[1])))


def test_a_forward_taking_star_args_exports_with_a_dynamic_batch(tmp_path):
    """forward(*xs) was given one batch spec per input where torch.export wants them as one tuple: the dynamic
    export failed and the file came out at a fixed batch, which onnxruntime refused at another batch size."""
    model, args = _VarArgs().eval(), (torch.randn(1, 8), torch.randn(1, 8))
    report = gp.export_onnx(model, args, tmp_path / "m.onnx")
    assert report.dynamic_batch
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"))
    feeds = [torch.randn(4, 8), torch.randn(4, 8)]
    got = sess.run(None, {i.name: f.numpy() for i, f in zip(sess.get_inputs(), feeds)})[0]
    np.testing.assert_allclose(got, model(*feeds).detach().numpy(), rtol=1e-4, atol=1e-5)


class _RestArgs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(8, 4)

    def forward(self, x, *rest, flag=True):
        return self.a(x + sum(rest)) if rest else self.a(x)


def test_a_forward_with_star_args_given_none_of_them_exports(tmp_path):
    """``forward(x, *rest)`` called with x alone binds no ``rest``: an IndexError (review)."""
    report = gp.export_onnx(_RestArgs().eval(), (torch.randn(1, 8),), tmp_path / "m.onnx")
    assert report.dynamic_batch and report.max_abs_diff < 1e-5


class _Keywords(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(8, 4)

    def forward(self, scale=1.0, **k):  # a thin wrapper's signature (around a diffusers model)
        return self.a(k["x"]) * scale + k["y"]


def test_a_forward_taking_star_kwargs_exports_with_a_dynamic_batch_and_its_own_weight_names(tmp_path):
    """``forward(**k)``: torch.export keys dynamic_shapes by 'k' and failed on a nested spec, so the file came out
    at a fixed batch with a warning. The inputs given by name now export with a dynamic batch, and the weights
    keep the model's names."""
    model = _Keywords().eval()
    kwargs = {"x": torch.randn(2, 8), "y": torch.randn(2, 4)}
    with warnings.catch_warnings():
        warnings.simplefilter("error", gp.PruneWarning)  # the fixed-batch fallback warns: none here
        report = gp.export_onnx(model, (), tmp_path / "m.onnx", kwargs)
    assert report.dynamic_batch
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"))
    assert sorted(i.name for i in sess.get_inputs()) == ["x", "y"]
    feeds = {"x": torch.randn(5, 8), "y": torch.randn(5, 4)}
    got = sess.run(None, {k: v.numpy() for k, v in feeds.items()})[0]
    np.testing.assert_allclose(got, model(**feeds).detach().numpy(), rtol=1e-4, atol=1e-5)
    import onnx
    names = {i.name for i in onnx.load(str(tmp_path / "m.onnx")).graph.initializer}
    assert {"a.weight", "a.bias"} <= names
