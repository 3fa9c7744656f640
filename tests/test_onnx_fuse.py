"""Activations spelled as several ops (paddle2onnx's hard-swish as Add/Clip/Mul/Div) written as the
single ops onnxruntime keeps in its blocked layout (graphprune/frontends/onnx_fuse.py), and
prune_onnx's use of it: same outputs, the file as given timed beside the fused one."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune as gp
from graphprune.frontends.onnx_fuse import fuse_activations

C = 8


def _const(name: str, value: float, shape=()) -> TensorProto:
    return numpy_helper.from_array(np.full(shape, value, dtype=np.float32), name)


def _relu6_plus_3(x: str, out: str, opset: int, nodes: list, inits: list, tag: str) -> None:
    """Clip(Add(x, 3), 0, 6) into ``out``: bounds as inputs from opset 11, as attributes before."""
    inits.append(_const(f"three{tag}", 3.0, (1,)))
    nodes.append(helper.make_node("Add", [f"three{tag}", x], [f"a{tag}"], name=f"add{tag}"))
    if opset >= 11:
        inits += [_const(f"zero{tag}", 0.0), _const(f"six{tag}", 6.0)]
        nodes.append(helper.make_node("Clip", [f"a{tag}", f"zero{tag}", f"six{tag}"], [out], name=f"clip{tag}"))
    else:
        nodes.append(helper.make_node("Clip", [f"a{tag}"], [out], name=f"clip{tag}", min=0.0, max=6.0))


def _spelled(x: str, out: str, form: str, opset: int, nodes: list, inits: list, tag: str = "") -> None:
    """One spelling of hard-swish (or, for "sigmoid", of hard-sigmoid) of ``x`` into ``out``."""
    _relu6_plus_3(x, f"r{tag}", opset, nodes, inits, tag)
    inits.append(_const(f"m{tag}", 1.0 / 6.0) if form == "mul_sixth" else _const(f"d{tag}", 6.0))
    if form == "mul_div":  # Div(Mul(x, relu6), 6): paddle2onnx
        nodes += [helper.make_node("Mul", [x, f"r{tag}"], [f"p{tag}"], name=f"mul{tag}"),
                  helper.make_node("Div", [f"p{tag}", f"d{tag}"], [out], name=f"div{tag}")]
    elif form == "mul_sixth":  # Mul(Mul(relu6, x), 1/6)
        nodes += [helper.make_node("Mul", [f"r{tag}", x], [f"p{tag}"], name=f"mul{tag}"),
                  helper.make_node("Mul", [f"m{tag}", f"p{tag}"], [out], name=f"scale{tag}")]
    elif form == "gate_mul":  # Mul(x, Div(relu6, 6)): a hard-sigmoid times x
        nodes += [helper.make_node("Div", [f"r{tag}", f"d{tag}"], [f"g{tag}"], name=f"div{tag}"),
                  helper.make_node("Mul", [f"g{tag}", x], [out], name=f"gate{tag}")]
    elif form == "sigmoid":  # Div(relu6, 6) alone
        nodes.append(helper.make_node("Div", [f"r{tag}", f"d{tag}"], [out], name=f"div{tag}"))
    else:
        raise ValueError(form)


def _model(form: str, opset: int, extra_out: str | None = None) -> onnx.ModelProto:
    """x -> 1x1 Conv -> activation -> 1x1 Conv -> y (``extra_out``: an inner value also a graph output)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((C, C, 1, 1)).astype(np.float32) * 2, "w1"),
             numpy_helper.from_array(rng.standard_normal((C, C, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="conv1")]
    _spelled("h", "act", form, opset, nodes, inits)
    nodes.append(helper.make_node("Conv", ["act", "w2"], ["y"], name="conv2"))
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, 6, 6])]
    if extra_out:
        outs.append(helper.make_tensor_value_info(extra_out, TensorProto.FLOAT, [1, C, 6, 6]))
    graph = helper.make_graph(nodes, "spelled", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 6, 6])],
                              outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def _hard_swish(h: np.ndarray) -> np.ndarray:  # the definition, not the code under test
    return h * np.clip(h + 3.0, 0.0, 6.0) / 6.0


@pytest.mark.parametrize("form", ["mul_div", "mul_sixth", "gate_mul"])
@pytest.mark.parametrize("opset", [9, 13, 14])
def test_each_spelling_of_hard_swish_becomes_one_activation(form, opset):
    model = _model(form, opset)
    given = copy.deepcopy(model)
    fused = fuse_activations(model)
    onnx.checker.check_model(model, full_check=True)
    assert len(fused.hard_swish) == 1 and not fused.hard_sigmoid
    ops = [n.op_type for n in model.graph.node]
    # HardSwish exists from opset 14; before it, HardSigmoid(x) * x, and the opset is never raised
    assert ops == (["Conv", "HardSwish", "Conv"] if opset >= 14 else ["Conv", "HardSigmoid", "Mul", "Conv"])
    assert model.opset_import[0].version == opset
    assert {i.name for i in model.graph.initializer} == {"w1", "w2"}  # the constants 3, 0, 6, 1/6 went with them
    x = np.random.default_rng(1).uniform(-1.5, 1.5, (1, C, 6, 6)).astype(np.float32)  # h spans the knees at -3, 3
    ref = _run(given, x)[0]
    np.testing.assert_allclose(_run(model, x)[0], ref, rtol=1e-5, atol=1e-5)
    w1, w2 = (numpy_helper.to_array(i)[:, :, 0, 0] for i in given.graph.initializer[:2])
    h = np.einsum("oc,bchw->bohw", w1, x)
    assert (np.abs(h) > 3).any() and (np.abs(h) < 3).any()  # both sides of the knees are exercised
    np.testing.assert_allclose(ref, np.einsum("oc,bchw->bohw", w2, _hard_swish(h)), rtol=1e-4, atol=1e-4)


def test_a_hard_sigmoid_alone_becomes_hard_sigmoid():
    model = _model("sigmoid", 13)
    given = copy.deepcopy(model)
    fused = fuse_activations(model)
    assert fused.hard_sigmoid == ["div"] and not fused.hard_swish
    node = next(n for n in model.graph.node if n.op_type == "HardSigmoid")
    attrs = {a.name: a.f for a in node.attribute}
    assert attrs["alpha"] == pytest.approx(1 / 6) and attrs["beta"] == pytest.approx(0.5)
    assert node.output[0] == "act" and node.name == "div"  # the chain's last node's name and output are kept
    x = np.random.default_rng(2).uniform(-1.5, 1.5, (1, C, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(model, x)[0], _run(given, x)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["inner value is an output", "not 3", "clip to 5"])
def test_a_chain_that_is_not_exactly_hard_swish_is_left(case):
    model = _model("mul_div", 13, extra_out="r" if case == "inner value is an output" else None)
    consts = {i.name: i for i in model.graph.initializer}
    if case == "not 3":
        consts["three"].CopyFrom(_const("three", 2.0, (1,)))
    if case == "clip to 5":
        consts["six"].CopyFrom(_const("six", 5.0))
    before = model.SerializeToString()
    assert not fuse_activations(model)
    assert model.SerializeToString() == before


def test_fusing_is_deterministic():
    a, b = _model("mul_div", 11), _model("mul_div", 11)
    fuse_activations(a)
    fuse_activations(b)
    assert a.SerializeToString() == b.SerializeToString()


def _two_blocks(path) -> None:
    """Conv -> spelled hard-swish -> Conv -> spelled hard-swish -> Conv, paddle2onnx's spelling, opset 11."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((16, 16, 1, 1)).astype(np.float32) * 0.3, "w2"),
             numpy_helper.from_array(rng.standard_normal((4, 16, 1, 1)).astype(np.float32) * 0.3, "w3")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h1"], name="conv1", pads=[1, 1, 1, 1])]
    _spelled("h1", "act1", "mul_div", 11, nodes, inits, "1")
    nodes.append(helper.make_node("Conv", ["act1", "w2"], ["h2"], name="conv2"))
    _spelled("h2", "act2", "mul_div", 11, nodes, inits, "2")
    nodes.append(helper.make_node("Conv", ["act2", "w3"], ["y"], name="conv3"))
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _prune(src, dst, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a toy this small may time slower: not what is tested here
        return gp.prune_onnx(src, dst, ratio=0.5, round_to=1, **kw)


def test_prune_onnx_writes_the_fused_activations_and_times_the_file_as_given(tmp_path):
    _two_blocks(tmp_path / "m.onnx")
    report = _prune(tmp_path / "m.onnx", tmp_path / "slim.onnx")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "slim.onnx")).graph.node]
    assert "Clip" not in ops and ops.count("HardSigmoid") == 2 and ops.count("Mul") == 2
    assert any(n.startswith("rewritten for onnxruntime: 2 hard-swish") for n in report.notes)
    assert report.oracle is not None and report.oracle.passed
    assert report.latency is not None and report.latency.given_ms is not None
    assert report.to_dict()["latency_ms"]["given"] == report.latency.given_ms
    assert "the original file as given" in str(report)
    # the same plan without fusion: the same weights, so the same function
    plain = _prune(tmp_path / "m.onnx", tmp_path / "plain.onnx", fuse=False)
    assert "Clip" in [n.op_type for n in onnx.load(str(tmp_path / "plain.onnx")).graph.node]
    assert plain.latency is not None and plain.latency.given_ms is None
    assert not any(n.startswith("rewritten for onnxruntime:") for n in plain.notes)
    x = {"x": np.random.default_rng(4).standard_normal((1, 3, 16, 16)).astype(np.float32)}
    outs = [ort.InferenceSession(str(tmp_path / f), providers=["CPUExecutionProvider"]).run(None, x)[0]
            for f in ("slim.onnx", "plain.onnx")]
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-4)


def test_outputs_that_differ_take_the_given_graph_back(tmp_path, monkeypatch):
    from graphprune.program import onnx_program

    _two_blocks(tmp_path / "m.onnx")
    monkeypatch.setattr(onnx_program, "output_gap", lambda given, fused, feeds: 0.5)  # a fusion gone wrong
    report = _prune(tmp_path / "m.onnx", tmp_path / "slim.onnx")
    assert "Clip" in [n.op_type for n in onnx.load(str(tmp_path / "slim.onnx")).graph.node]
    assert any(n.startswith("rewritten for onnxruntime: taken back") and "5.00e-01" in n for n in report.notes)
    assert report.latency is not None and report.latency.given_ms is None


def test_fuse_must_be_a_bool():
    with pytest.raises(gp.PlanError, match="fuse must be True or False"):
        gp.PruneOptions.of(fuse="yes")


# ---- graphs a first version got wrong (a review's reproductions) ----------------------------------------

def _flat(nodes_after=(), x_dtype=TensorProto.FLOAT, dtype=np.float32, extra_inputs=(), outputs=("y",)):
    """x -> spelled hard-swish (paddle2onnx's, rank-0 constants) -> y, then ``nodes_after``."""
    nodes = [helper.make_node("Add", ["x", "three"], ["a"], name="add"),
             helper.make_node("Clip", ["a", "zero", "six"], ["r"], name="clip"),
             helper.make_node("Mul", ["x", "r"], ["p"], name="mul"),
             helper.make_node("Div", ["p", "d"], ["y"], name="div"), *nodes_after]
    inits = [numpy_helper.from_array(np.asarray(v, dtype=dtype), n) for n, v in
             (("three", 3.0), ("zero", 0.0), ("six", 6.0), ("d", 6.0))]
    graph = helper.make_graph(nodes, "flat", [helper.make_tensor_value_info("x", x_dtype, [2, 3]), *extra_inputs],
                              [helper.make_tensor_value_info(o, x_dtype, [2, 3]) for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _if_reading(name: str) -> onnx.NodeProto:
    """An If whose then-branch reads ``name`` from the outer graph without listing it as an input."""
    then = helper.make_graph([helper.make_node("Identity", [name], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 3])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 3])])
    return helper.make_node("If", ["c"], ["z"], name="if", then_branch=then, else_branch=other)


@pytest.mark.parametrize("read", ["r", "six"])
def test_a_value_a_subgraph_reads_is_neither_fused_away_nor_dropped(read):
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    model = _flat([_if_reading(read)], extra_inputs=(cond,), outputs=("y", "z"))
    given = copy.deepcopy(model)
    fused = fuse_activations(model)
    assert bool(fused) == (read == "six")  # the Clip's output is an inner result only if nothing else reads it
    feeds = {"x": np.linspace(-5, 5, 6, dtype=np.float32).reshape(2, 3), "c": np.array(True)}
    for a, b in zip(_run_feeds(given, feeds), _run_feeds(model, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _run_feeds(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_double_models_are_left_alone():
    """onnxruntime's CPU build has no double HardSigmoid/HardSwish."""
    model = _flat(x_dtype=TensorProto.DOUBLE, dtype=np.float64)
    assert not fuse_activations(model)


def test_a_rank_1_constant_on_a_rank_0_value_is_not_matched():
    """Add(scalar, [3]) has shape (1,): HardSwish(scalar) would drop that dim."""
    model = _model("mul_div", 13)  # rank-1 constants (1,) on a rank-4 conv output: matched
    assert fuse_activations(model)
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
             helper.make_node("Add", ["s", "three"], ["a"], name="add"),
             helper.make_node("Clip", ["a", "zero", "six"], ["r"], name="clip"),
             helper.make_node("Mul", ["s", "r"], ["p"], name="mul"),
             helper.make_node("Div", ["p", "d"], ["y"], name="div")]
    inits = [_const("three", 3.0, (1,)), _const("zero", 0.0), _const("six", 6.0), _const("d", 6.0)]
    graph = helper.make_graph(nodes, "r0", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    assert not fuse_activations(model)


def test_new_names_avoid_every_name_in_the_model_and_stale_shapes_go():
    unused = numpy_helper.from_array(np.zeros(1, np.float32), "div_gate")  # the name the gate would take
    model = _flat()
    model.graph.initializer.append(unused)
    model.graph.value_info.extend([helper.make_tensor_value_info(v, TensorProto.FLOAT, [2, 3]) for v in "arp"])
    assert fuse_activations(model)
    onnx.checker.check_model(model, full_check=True)  # still single assignment
    gate = next(n for n in model.graph.node if n.op_type == "HardSigmoid")
    assert gate.output[0] != "div_gate"
    assert not {v.name for v in model.graph.value_info} & {"a", "r", "p"}


def test_a_constant_that_can_be_fed_is_not_read_as_fixed():
    model = _flat()
    model.graph.input.append(helper.make_tensor_value_info("three", TensorProto.FLOAT, []))  # an overridable default
    assert not fuse_activations(model)


def test_the_gap_sees_nans_and_infinities():
    from graphprune.program.onnx_program import output_gap

    ident = _flat([helper.make_node("Log", ["y"], ["w"], name="log")], outputs=("w",))
    other = copy.deepcopy(ident)
    next(i for i in other.graph.initializer if i.name == "d").CopyFrom(_const("d", 5.0))
    x = {"x": np.array([[-4.0, -1.0, 0.5], [1.0, 2.0, 30.0]], np.float32)}  # log of a negative: NaN in both
    assert output_gap(ident, copy.deepcopy(ident), x) == 0.0
    ref = _run(ident, x["x"])[0]
    assert np.isnan(ref).any()
    # dividing by 5 instead of 6 adds log(6/5) to every finite log; relative to the largest |log|
    want = np.log(6 / 5) / np.abs(ref[np.isfinite(ref)]).max()
    assert output_gap(ident, other, x) == pytest.approx(want, rel=1e-3)
    nan_where_other_is_not = copy.deepcopy(ident)
    next(i for i in nan_where_other_is_not.graph.initializer if i.name == "d").CopyFrom(_const("d", -6.0))
    assert output_gap(ident, nan_where_other_is_not, x) == float("inf")


def test_a_rewrite_that_does_not_run_is_taken_back(tmp_path, monkeypatch):
    from graphprune.program import onnx_program

    def fails(given, fused, feeds):
        raise RuntimeError("[ONNXRuntimeError] : 10 : INVALID_GRAPH : a stand-in")

    _two_blocks(tmp_path / "m.onnx")
    monkeypatch.setattr(onnx_program, "output_gap", fails)
    report = _prune(tmp_path / "m.onnx", tmp_path / "slim.onnx")
    assert any(n.startswith("rewritten for onnxruntime: taken back") and "INVALID_GRAPH" in n for n in report.notes)
    assert "Clip" in [n.op_type for n in onnx.load(str(tmp_path / "slim.onnx")).graph.node]


def test_a_plan_made_on_load_onnx_fits_prune_onnx(tmp_path):
    """load_onnx fuses as prune_onnx does by default, so their groups (and a plan's ids) agree."""
    _two_blocks(tmp_path / "m.onnx")
    graph = gp.load_onnx(str(tmp_path / "m.onnx"))
    wide = max(graph.groups, key=lambda g: g.size)
    plan = gp.PrunePlan({wide.id: list(range(wide.size // 2))}, {wide.id: wide.size})
    report = _prune(tmp_path / "m.onnx", tmp_path / "slim.onnx", plan_=plan)
    assert report.kept[wide.id] == (wide.size - wide.size // 2, wide.size)


def test_the_cli_fuses_by_default_and_keeps_the_ops_with_no_fuse(tmp_path):
    import json
    import subprocess
    import sys

    _two_blocks(tmp_path / "m.onnx")
    for flag, fused in (((), True), (("--no-fuse",), False)):
        out = tmp_path / f"slim{len(flag)}.onnx"
        r = subprocess.run([sys.executable, "-m", "graphprune", "prune", str(tmp_path / "m.onnx"), "-o", str(out),
                            "--ratio", "0.5", "--round-to", "1", "--json", *flag], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert (doc["latency_ms"]["given"] is not None) == fused
        assert ("Clip" in [n.op_type for n in onnx.load(str(out)).graph.node]) != fused


def test_nothing_pruned_still_writes_and_times_the_fused_file(tmp_path):
    """ratio=0 makes graphprune an optimiser of the file alone: the fused file, timed against the given one."""
    _two_blocks(tmp_path / "m.onnx")
    report = gp.prune_onnx(tmp_path / "m.onnx", tmp_path / "same.onnx", ratio=0.0)
    assert report.params_after == report.params_before
    assert "Clip" not in [n.op_type for n in onnx.load(str(tmp_path / "same.onnx")).graph.node]
    assert report.latency is not None and report.latency.given_ms is not None
