"""Mistakes a new user made (session 51's bad-input round): each gets a GraphpruneError naming what
to fix before any work, and leaves nothing behind. Before, these replaced the input file, wrote ONNX
bytes under .pt, failed in a linear-algebra solver, or left the model written after an error."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import graphprune as gp
from graphprune.cli.main import main
from graphprune.errors import GraphpruneError, TraceError


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()


@pytest.fixture()
def mlp(tmp_path):
    path = tmp_path / "mlp.onnx"
    gp.export_onnx(_net(), (torch.randn(4, 8),), path)
    return path


def test_prune_onnx_refuses_to_replace_its_input(mlp):
    before = mlp.read_bytes()
    with pytest.raises(GraphpruneError, match="is the input file"):
        gp.prune_onnx(mlp, mlp, ratio=0.5, measure_latency=False)
    with pytest.raises(GraphpruneError, match="is the input file"):
        gp.prune_onnx(mlp, mlp.parent / "." / mlp.name, ratio=0.5, measure_latency=False)
    assert mlp.read_bytes() == before


def test_prune_onnx_writes_onnx_files_only(mlp):
    with pytest.raises(GraphpruneError, match="names another format; give a .onnx path"):
        gp.prune_onnx(mlp, mlp.parent / "slim.pt", ratio=0.5, measure_latency=False)
    assert not (mlp.parent / "slim.pt").exists()


def test_prune_onnx_inputs_must_be_named(mlp):
    with pytest.raises(GraphpruneError, match=r"inputs= takes \{input name: array\}, not a tuple"):
        gp.prune_onnx(mlp, mlp.parent / "s.onnx", inputs=(np.zeros((4, 8), np.float32),))


def test_prune_onnx_into_an_unwritable_place_is_refused_before_the_work(mlp, tmp_path):
    (tmp_path / "afile").write_text("in the way")
    with pytest.raises(GraphpruneError, match="is a file, not a folder"):
        gp.prune_onnx(mlp, tmp_path / "afile" / "s.onnx", ratio=0.5, measure_latency=False)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_calibration_data_with_nan_or_inf_is_named(mlp, tmp_path, bad):
    x = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    x[3, 5] = bad
    calib = [{"input": np.ones((16, 8), np.float32)}, {"input": x}]
    with pytest.raises(GraphpruneError, match=r"calibration batch 1, input 'input': 1 of 128 values are NaN or Inf"):
        gp.prune_onnx(mlp, tmp_path / "s.onnx", ratio=0.5, calib=calib, measure_latency=False)
    assert not (tmp_path / "s.onnx").exists()
    t = torch.ones(16, 8)
    t[0, 0] = float(bad)
    with pytest.raises(GraphpruneError, match=r"calibration batch 0, input #0: 1 of 128"):
        gp.prune(_net(), (torch.randn(4, 8),), ratio=0.5, calib=[(t,)], measure_latency=False)


def test_cli_report_and_plot_paths_are_checked_before_the_prune(mlp, tmp_path, capsys):
    (tmp_path / "rep").write_text("a file, not a folder")
    out = tmp_path / "s.onnx"
    assert main(["prune", str(mlp), "-o", str(out), "--report", str(tmp_path / "rep"), "--no-latency"]) == 2
    assert "--report names a folder" in capsys.readouterr().err and not out.exists()
    assert main(["prune", str(mlp), "-o", str(out), "--plot-layers", str(tmp_path / "rep" / "p.png"),
                 "--no-latency"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err and not out.exists()


def _fixed_batch_mlp(path, batch: int):
    """x (batch, 8) -> MatMul 8x32 -> Relu -> MatMul 32x4, the batch fixed as a plain export fixes it."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             (("w1", (8, 32)), ("w2", (32, 4)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"], name="m1"), helper.make_node("Relu", ["a"], ["r"], name="r"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="m2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    import onnx

    onnx.save(model, str(path))


def test_calibration_batches_are_cut_to_a_fixed_batch(tmp_path):
    """A model exported with its batch fixed at 1 refused the CLI's default 8-item batches, with an
    error whose first line alone did not say which dim was wrong."""
    _fixed_batch_mlp(tmp_path / "one.onnx", 1)
    x = np.random.default_rng(1).standard_normal((8, 8)).astype(np.float32)
    report = gp.prune_onnx(tmp_path / "one.onnx", tmp_path / "s.onnx", ratio=0.5, calib=[{"x": x}] * 4,
                           measure_latency=False, round_to=1)
    assert report.kept and any("batches cut into batches of 1" in n for n in report.notes)
    _fixed_batch_mlp(tmp_path / "two.onnx", 2)  # 3 items cannot be cut into 2s: onnxruntime's whole message
    with pytest.raises(GraphpruneError, match=r"index: 0 Got: 3 Expected: 2"):
        gp.prune_onnx(tmp_path / "two.onnx", tmp_path / "t.onnx", ratio=0.5, calib=[{"x": x[:3]}],
                      measure_latency=False)


def test_options_of_the_wrong_type_are_named():
    m = _net()
    with pytest.raises(GraphpruneError, match=r"budget must name what it limits, \{'macs': 0.5\}"):
        gp.prune(m, (torch.randn(2, 8),), budget=0.5)  # was TypeError: 'float' object is not iterable
    with pytest.raises(GraphpruneError, match="ignore takes names"):
        gp.prune(m, (torch.randn(2, 8),), ignore=[3])
    with pytest.raises(GraphpruneError, match="not a submodule of the model"):
        gp.prune(m, (torch.randn(2, 8),), ignore=[torch.nn.Linear(2, 2)])


def test_ignore_takes_the_modules_a_user_holds():
    m = _net()
    _, report = gp.prune(m, (torch.randn(2, 8),), ratio=0.5, ignore=[m[0]], measure_latency=False, round_to=1)
    assert m[0].out_features == 32 and report.params_after == report.params_before  # its one group kept whole


def _llama():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=64, use_cache=False)
    return transformers.LlamaForCausalLM(cfg).eval()


def test_transformers_calibration_in_the_forms_users_have():
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    with pytest.raises(GraphpruneError, match="calibration batch 0 is text; tokenize it first"):
        gp.hf.prune(_llama(), ratio=0.3, calib=["hello world"], generated=0)
    with pytest.raises(GraphpruneError, match=r"input_ids holds ids from \d+ to \d+, but the model's embedding has 64 rows"):
        gp.hf.prune(_llama(), ratio=0.3, calib=[{"input_ids": ids + 100}], generated=0)  # was an IndexError
    with pytest.raises(GraphpruneError, match="example input 0: input_ids holds ids"):
        gp.hf.prune(_llama(), {"input_ids": ids + 64}, ratio=0.3)
    # a tuple (ids,) or a bare tensor of ids is the forward's first input: pruned as the dict form is
    kept = [gp.hf.prune(_llama(), ratio=0.3, calib=[c], generated=0)[1].kept for c in ((ids,), ids, {"input_ids": ids})]
    assert kept[0] == kept[1] == kept[2]


def test_spelling_mistakes_get_the_right_hint(mlp, tmp_path, capsys):
    with pytest.raises(GraphpruneError, match=r"input_shapes\['input'\] = '1x8'"):
        gp.prune_onnx(mlp, tmp_path / "s.onnx", input_shapes={"input": "1x8"})
    with pytest.raises(GraphpruneError, match="did you mean 'generated'"):  # hf.prune's own keyword, not 'calib'
        gp.hf.prune(_llama(), calib_generated=0)
    with pytest.raises(GraphpruneError, match=r"budget macs=2 is a count \(above 1\)"):  # 2 MACs: surely 'macs=0.5'
        gp.prune(_net(), (torch.randn(2, 8),), budget={"macs": 2})
    assert main(["prune", str(mlp), "-o", str(tmp_path / "s.onnx"), "--ratios", "0=0.5,0=0.2"]) == 2
    assert "gives '0' twice" in capsys.readouterr().err
    (tmp_path / "d.onnx").mkdir()
    assert main(["prune", str(tmp_path / "d.onnx"), "-o", str(tmp_path / "s.onnx")]) == 2
    assert "is a folder, not an ONNX file" in capsys.readouterr().err


def test_save_pruned_into_an_unwritable_place_is_named(tmp_path):
    model, _ = gp.hf.prune(_llama(), ratio=0.3)
    (tmp_path / "afile").write_text("in the way")
    with pytest.raises(GraphpruneError, match="save_pruned to .* is a file, not a folder"):
        gp.hf.save_pruned(model, tmp_path / "afile" / "out")  # was a raw OSError from transformers


def test_a_misspelt_calibration_key_is_named():
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    with pytest.raises(GraphpruneError, match="calibration batch 0 has no 'input_ids', the model's main input; it "
                                              "gives 'input_idz'"):  # was torch.export's "specify exactly one of"
        gp.hf.prune(_llama(), ratio=0.3, calib=[{"input_idz": ids}], generated=0)


def test_ratio_and_budget_together_are_refused_and_runtime_none_is_spelt_as_on_the_cli():
    with pytest.raises(GraphpruneError, match="ratio= and budget= both choose how much goes"):
        gp.prune(_net(), (torch.randn(2, 8),), ratio=0.3, budget={"params": 0.9})  # the ratio went unread
    _, report = gp.prune(_net(), (torch.randn(2, 8),), ratio=0.5, runtime="none")
    assert report.latency is None  # measured nothing, as --runtime none


def test_loading_from_a_folder_that_is_not_there_says_so(tmp_path):
    with pytest.raises(GraphpruneError, match="is not a folder .*does not exist"):
        gp.hf.load_pruned(tmp_path / "nowhere")  # said "has no graphprune.json: save the model with ..."
    with pytest.raises(GraphpruneError, match="does not exist"):
        gp.load_pruned(tmp_path / "nowhere")


def test_an_unreachable_budget_with_blocks_says_how_far_it_got():
    """With targets including blocks the refusal gave no numbers; without them it says what is left."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=4096, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=64, use_cache=False)
    ids = torch.randint(0, 4096, (2, 16), generator=torch.Generator().manual_seed(0))
    with pytest.raises(GraphpruneError, match=r"cheapest of \d+ block\(s\) removed: .*leaves [\d,]+ \(of [\d,]+\)"):
        gp.hf.prune(transformers.LlamaForCausalLM(cfg).eval(), budget={"params": 0.8}, calib=[{"input_ids": ids}],
                    targets=("blocks", "heads", "ffn"), allocation="global", generated=0)  # the embeddings are 90%


def test_the_review_cases_still_work():
    """Cases a reviewer found the new checks got wrong: a transformers model whose forward takes no
    input_ids (every PreTrainedModel says main_input_name 'input_ids'), ignore= as a generator (read by the
    check, then empty), numpy integers in input_shapes, and (ids, labels) tuples."""
    import transformers

    class Features(transformers.PreTrainedModel):
        config_class = transformers.PretrainedConfig

        def __init__(self, config):
            super().__init__(config)
            self.a, self.b = torch.nn.Linear(8, 32), torch.nn.Linear(32, 4)

        def forward(self, features):
            return self.b(torch.relu(self.a(features)))

    model = Features(transformers.PretrainedConfig()).eval()
    x = torch.randn(16, 8)
    _, report = gp.hf.prune(model, {"features": x}, ratio=0.5, calib=[{"features": x}], generated=0, round_to=1)
    assert report.params_after < report.params_before
    m = _net()
    gp.prune(m, (torch.randn(2, 8),), ratio=0.5, ignore=(n for n in ["0"]), round_to=1, measure_latency=False)
    assert m[0].out_features == 32  # kept whole, as the list form keeps it
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    with pytest.raises(GraphpruneError, match="is a tuple of 2; give a dict by input name"):
        gp.hf.prune(_llama(), ratio=0.3, calib=[(ids, ids)], generated=0)


def test_numpy_integers_are_shapes(mlp, tmp_path):
    report = gp.prune_onnx(mlp, tmp_path / "s.onnx", ratio=0.5, input_shapes={"input": tuple(np.array([4, 8]))},
                           measure_latency=False)
    assert report.kept


def test_a_calibration_batch_the_model_cannot_run_is_named_as_such():
    """A user's crops came as (4, 1, 3, 48, 48); the error named the model's forward, not calib=."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3)).eval()
    with pytest.raises(gp.TraceError, match=r"calibration batch 0 has input shapes \[\(4, 1, 3, 16, 16\)\] where the "
                                            r"example has \[\(1, 3, 16, 16\)\].*Give batches shaped like the example"):
        gp.prune(model, (torch.randn(1, 3, 16, 16),), ratio=0.5, calib=[torch.randn(4, 1, 3, 16, 16)], runtime=None)
    with pytest.raises(gp.TraceError, match="The forward fixes its batch size"):  # only the batch differs
        gp.prune(_FixedBatch().eval(), (torch.randn(2, 8),), ratio=0.5, calib=[torch.randn(4, 8)], runtime=None)


class _FixedBatch(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)).reshape(2, 16))


def test_plan_with_its_arguments_swapped_says_which_comes_first():
    """trace(model, args) and plan(graph, model) read in opposite orders; a user's swapped call failed deep inside."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    graph = gp.trace(model, (torch.randn(2, 4),))
    with pytest.raises(gp.PlanError, match=r"graphprune.plan takes the graph first: plan\(graph, model"):
        gp.plan(model, graph, ratio=0.5)
    assert gp.plan(graph, model, ratio=0.5, round_to=1).pruned  # the right order plans


class _ChecksItsLength(torch.nn.Module):
    """Checks its input's length through tensor data, as asteroid's DCUNet does, and raises its own error."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(1, 8, 3, padding=1)

    def forward(self, x):
        if int(torch.tensor(x.shape[-1]) % 16):
            raise ValueError("input length must be divisible by 16; set fix_length_mode='pad'")
        return self.conv(x)


def test_inputs_the_model_itself_refuses_get_the_models_error():
    """Before, the error was torch.export's data-dependent guard (the data read), not the model's own words."""
    model = _ChecksItsLength().eval()
    with pytest.raises(gp.TraceError, match=r"fails on the example inputs, untraced: ValueError: input length must"):
        gp.prune(model, (torch.randn(1, 1, 100),), ratio=0.5, runtime=None)


class _FailsWhenTraced(torch.nn.Module):
    """Builds its attention mask another way under export, and rejects it (transformers' Informer and
    Nystromformer): untraced it runs."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        mask = torch.ones(x.shape[0], 1, 2 * x.shape[1], 2 * x.shape[1]) if torch.compiler.is_exporting() else None
        if mask is not None and mask.shape[-1] != x.shape[1]:
            raise ValueError(f"Attention mask should be of size {x.shape[1]}, but is {mask.shape[-1]}")
        return self.lin(x)


def test_a_model_that_fails_only_when_traced_is_told_so():
    """The error blamed the example inputs and data-dependent control flow; the inputs were right."""
    model = _FailsWhenTraced().eval()
    model(torch.randn(2, 4, 8))
    with pytest.raises(gp.TraceError, match=r"runs on the example inputs untraced, but raises when traced.*"
                                             r"Attention mask should be.*the inputs are not the cause"):
        gp.prune(model, (torch.randn(2, 4, 8),), ratio=0.5, runtime=None)


def test_a_submodule_named_like_a_module_method_is_refused_by_name():
    """nbeats-pytorch registers ``self.parameters = nn.ParameterList(...)``: lookup by name finds the method, and the
    trace failed with torch's message about a bound method plus advice about the example inputs."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(10, 8)
            self.parameters = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(1))])

        def forward(self, x):
            return self.a(x)

    with pytest.raises(TraceError, match=r"submodule 'parameters' of Net has the name of Net.parameters.*Rename"):
        gp.prune(Net().eval(), (torch.randn(2, 10),), measure_latency=False)


class _DLinear(torch.nn.Module):
    """neuralforecast's DLinear: a moving average over time, then linear maps from the input window to the horizon."""

    def __init__(self, window: int = 24, horizon: int = 12) -> None:
        super().__init__()
        self.trend, self.season = torch.nn.Linear(window, horizon), torch.nn.Linear(window, horizon)

    def forward(self, x):  # (batch, window)
        trend = torch.nn.functional.avg_pool1d(torch.nn.functional.pad(x[:, None], (2, 2), mode="replicate"), 5, 1)[:, 0]
        return self.trend(trend) + self.season(x - trend)


def test_a_model_with_positions_only_is_refused_as_such():
    """The refusal said to replace or remove the pool it named; the model has no channel at all."""
    with pytest.raises(gp.PlanError, match=r"positions \(time steps, pixels\), not channels.*no hidden width"):
        gp.prune(_DLinear().eval(), (torch.randn(2, 24),), ratio=0.5, runtime=None)


class _ReturnsItsState(torch.nn.Module):
    """gluonts' DeepAR: lags stacked into the features, a category embedded, and the LSTM's state returned."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.rnn, self.proj = torch.nn.Embedding(3, 2), torch.nn.LSTM(6, 40, batch_first=True), torch.nn.Linear(40, 3)

    def forward(self, x, cat):
        lags = torch.stack([x, x.roll(1, 1), x.roll(2, 1), x.roll(3, 1)], dim=-1)
        out, state = self.rnn(torch.cat([lags, self.emb(cat)[:, None].expand(-1, x.shape[1], -1)], -1))
        return self.proj(out), state, self.emb(cat)  # DeepAR returns its static features too


def test_nothing_prunable_names_the_widest_width_the_interface_keeps():
    """The refusal listed a 4-wide stack and a 3-row embedding, and not the 40 LSTM units the returned state keeps."""
    with pytest.raises(gp.PlanError, match=r"the widest 40 channel\(s\): model output .*return only what callers need"):
        gp.prune(_ReturnsItsState().eval(), (torch.randn(2, 12), torch.tensor([0, 2])), measure_latency=False)


class _TensorDictLike:
    """What torchrl passes: a mapping of tensors that also answers ``dtype`` and ``is_floating_point`` (TensorDict)."""

    dtype = torch.float32

    def __init__(self, entries: dict) -> None:
        self.entries = entries

    def is_floating_point(self):
        return self

    def items(self):
        return self.entries.items()


def test_a_mapping_of_tensors_is_checked_entry_by_entry():
    """``int((~x.isfinite()).sum())`` on a TensorDict raised a raw TypeError from the finite-values check."""
    from graphprune.calib.collect import check_finite

    good = _TensorDictLike({"observation": torch.randn(4, 6), "step": torch.arange(4)})
    assert check_finite([((good,), {})])
    bad = _TensorDictLike({"observation": torch.tensor([[1.0, float("nan")]])})
    with pytest.raises(gp.PlanError, match=r"calibration batch 0, input #0\['observation'\]: 1 of 2 values are NaN"):
        check_finite([((bad,), {"td": good})])


class _PartlyKeyword(torch.nn.Module):
    """vocos: ``forward(x, bandwidth_id=None)``, its example given as ``(x,)`` and ``{"bandwidth_id": ...}``."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.emb, self.down = torch.nn.Linear(6, 32), torch.nn.Embedding(4, 32), torch.nn.Linear(32, 6)

    def forward(self, x, bandwidth_id=None):
        return self.down(torch.relu(self.up(x) + self.emb(bandwidth_id)[:, None]))


def test_an_example_given_partly_by_position_is_calibrated_on_dicts_by_name():
    """Such an example could not be calibrated: a dict batch was all keyword inputs ('positional inputs: 0 item(s),
    where the example has 1'), a tuple all positional. A dict naming forward's positional parameters now fits."""
    torch.manual_seed(0)
    make = lambda: {"x": torch.randn(2, 5, 6), "bandwidth_id": torch.randint(0, 4, (2,))}  # noqa: E731
    example = make()
    pruned, report = gp.prune(_PartlyKeyword().eval(), (example["x"],), {"bandwidth_id": example["bandwidth_id"]},
                              ratio=0.5, calib=[make() for _ in range(4)], verify=True, measure_latency=False)
    assert report.oracle.passed and pruned.up.out_features == 16 and report.compensation is not None
