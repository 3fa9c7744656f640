"""A Mul/Add by a scalar after a convolution folded into it when an ONNX model is loaded for pruning
(graphprune/frontends/onnx_affine.py): what folds, what must not, the outputs, and the pruned file."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune as gp
from graphprune.frontends.onnx_affine import fold_conv_affine

S1, B1, S2, B3 = 0.75, -0.5, 1.5, 0.25


def _model(path=None) -> onnx.ModelProto:
    """x -> conv a (bias) -> Mul(S1) -> Add(B1, constant first) -> relu -> conv b (no bias) ->
    Mul(S2, a Constant node) -> relu -> conv c (bias) -> Add(B3) -> y. Conv c's Add reads a scalar
    that is also a graph input (fed: never folded)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("wa", (8, 3, 3, 3)), ("ba", (8,)), ("wb", (8, 8, 1, 1)), ("wc", (4, 8, 3, 3)), ("bc", (4,)))]
    inits += [numpy_helper.from_array(np.array(S1, np.float32), "s1"),
              numpy_helper.from_array(np.array([B1], np.float32), "b1"),
              numpy_helper.from_array(np.array(B3, np.float32), "b3")]
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="ca", pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["a", "s1"], ["am"], name="mul_a"),
             helper.make_node("Add", ["b1", "am"], ["aa"], name="add_a"),
             helper.make_node("Relu", ["aa"], ["ar"], name="relu_a"),
             helper.make_node("Conv", ["ar", "wb"], ["b"], name="cb"),
             helper.make_node("Constant", [], ["s2"], name="s2c", value=numpy_helper.from_array(np.array(S2, np.float32))),
             helper.make_node("Mul", ["s2", "b"], ["bm"], name="mul_b"),
             helper.make_node("Relu", ["bm"], ["br"], name="relu_b"),
             helper.make_node("Conv", ["br", "wc", "bc"], ["c"], name="cc", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "b3"], ["y"], name="add_c")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
                                           helper.make_tensor_value_info("b3", TensorProto.FLOAT, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if path is not None:
        onnx.save(model, str(path))
    return model


def _run(model: onnx.ModelProto, x: np.ndarray, b3: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x, "b3": b3})[0]


def test_scalar_affine_after_a_conv_folds_into_its_weights_and_bias():
    model = _model()
    given = onnx.ModelProto.FromString(model.SerializeToString())
    arrays = {i.name: numpy_helper.to_array(i) for i in given.graph.initializer}
    assert sorted(fold_conv_affine(model)) == ["add_a", "mul_a", "mul_b"]
    ops = [n.op_type for n in model.graph.node if n.op_type != "Constant"]
    assert ops == ["Conv", "Relu", "Conv", "Relu", "Conv", "Add"]  # conv c's Add reads a fed scalar: kept
    got = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    # derived from the module doc's identity, not from the code: s * conv(x, W, c) + b = conv(x, s W, s c + b)
    assert np.allclose(got["wa"], S1 * arrays["wa"]) and np.allclose(got["ba"], S1 * arrays["ba"] + B1)
    assert np.allclose(got["wb"], S2 * arrays["wb"])
    new_bias = next(n.input[2] for n in model.graph.node if n.name == "cb")
    assert np.array_equal(got[new_bias], np.zeros(8, np.float32))  # S2 * (no bias) = 0: a bias is made
    assert "s1" not in got and "b1" not in got and "b3" in got  # the folded scalars are gone, the fed one stays
    onnx.checker.check_model(model)
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    b3 = np.array(B3, np.float32)
    assert np.allclose(_run(model, x, b3=b3), _run(given, x, b3=b3), rtol=1e-5, atol=1e-5)
    assert fold_conv_affine(model) == []  # nothing left


def _modified(case: str) -> onnx.ModelProto:
    model = _model()
    g = model.graph
    if case == "two readers":  # the conv's own output is read again: folding would change that reader
        g.node.append(helper.make_node("Identity", ["a"], ["a_too"], name="tap"))
        g.output.append(helper.make_tensor_value_info("a_too", TensorProto.FLOAT, [1, 8, 8, 8]))
    elif case == "shared weight":  # conv b's weight feeds a second conv: scaling it would change that one
        g.node.append(helper.make_node("Conv", ["ar", "wb"], ["b_twin"], name="cb_twin"))
        g.output.append(helper.make_tensor_value_info("b_twin", TensorProto.FLOAT, [1, 8, 8, 8]))
    else:  # s1 per channel: not one value (not folded here)
        i = next(k for k, t in enumerate(g.initializer) if t.name == "s1")
        g.initializer[i].CopyFrom(numpy_helper.from_array(np.full((8, 1, 1), S1, np.float32), "s1"))
    return model


@pytest.mark.parametrize("case", ["two readers", "shared weight", "per-channel"])
def test_what_must_not_fold(case):
    """A conv output another op also reads, a weight another conv also uses, and a constant that is
    not one value are left as they are; every output stays what it was."""
    model, given = _modified(case), _modified(case)
    left = {"two readers": "mul_a", "shared weight": "mul_b", "per-channel": "mul_a"}[case]
    folded = fold_conv_affine(model)
    assert left not in folded and left in [n.name for n in model.graph.node]
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    feeds = {"x": x, "b3": np.array(B3, np.float32)}
    got, want = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
                 for m in (model, given))
    assert len(got) == len(want) and all(np.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(got, want))


def test_prune_onnx_folds_says_so_and_the_pruned_file_computes_the_same(tmp_path):
    src = _model(tmp_path / "m.onnx")
    del src.graph.input[1:]  # b3 as a plain constant here, so conv c's Add folds too
    onnx.save(src, str(tmp_path / "m.onnx"))
    rep = gp.prune_onnx(tmp_path / "m.onnx", tmp_path / "p.onnx", ratio=0.25, round_to=1, runtime=None)
    note = next(n for n in rep.notes if n.startswith("rewritten for onnxruntime:"))
    assert "4 Mul/Add by a scalar beside a convolution folded into its weights and bias" in note, note
    pruned = onnx.load(str(tmp_path / "p.onnx"))
    assert not [n for n in pruned.graph.node if n.op_type in ("Mul", "Add")]  # the pruned file carries the fold
    assert rep.macs_after < rep.macs_before


def _ahead_model(pads: list[int], op: str, transposed_tail: bool = False) -> onnx.ModelProto:
    """x -> relu -> ``op``(scalar V) -> conv (weights w, bias c, ``pads``) -> y; with
    ``transposed_tail`` a ConvTranspose (no bias) -> Mul(S) -> Add(B) follows."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((6, 2, 3, 3)).astype(np.float32), "w"),  # group 2
             numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "c"),
             numpy_helper.from_array(np.array(V, np.float32), "v")]
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node(op, ["r", "v"], ["rv"], name="ahead"),
             helper.make_node("Conv", ["rv", "w", "c"], ["y" if not transposed_tail else "h"], name="conv",
                              group=2, pads=pads)]
    if transposed_tail:
        inits += [numpy_helper.from_array(rng.standard_normal((6, 1, 2, 2)).astype(np.float32), "wt"),
                  numpy_helper.from_array(np.array(S1, np.float32), "s"),
                  numpy_helper.from_array(np.array(B1, np.float32), "b")]
        nodes += [helper.make_node("ConvTranspose", ["h", "wt"], ["t"], name="convt", group=3, strides=[2, 2]),
                  helper.make_node("Mul", ["t", "s"], ["ts"], name="tail_mul"),
                  helper.make_node("Add", ["ts", "b"], ["y"], name="tail_add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


V = 0.3


def _outputs(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("op,pads,folds", [("Mul", [1, 1, 1, 1], True), ("Add", [0, 0, 0, 0], True),
                                           ("Add", [1, 1, 1, 1], False)])
def test_scalar_affine_before_a_conv_folds_where_its_padding_allows(op, pads, folds):
    """conv(s x) = conv(x, s W) whatever the padding; conv(x + b) = conv(x, W, c + b sum(W)) only where
    nothing is padded (a padded border sees 0, not b)."""
    model = _ahead_model(pads, op)
    given = onnx.ModelProto.FromString(model.SerializeToString())
    w, c = (numpy_helper.to_array(t) for t in given.graph.initializer[:2])
    assert fold_conv_affine(model) == (["ahead"] if folds else [])
    got = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    if folds and op == "Mul":
        assert np.allclose(got["w"], V * w) and np.array_equal(got["c"], c)
    elif folds:  # each output channel's bias gains V times the sum of its own (grouped) filter
        assert np.array_equal(got["w"], w) and np.allclose(got["c"], c + V * w.sum(axis=(1, 2, 3)))
    x = np.random.default_rng(4).standard_normal((1, 4, 8, 8)).astype(np.float32)
    assert np.allclose(_outputs(model, x), _outputs(given, x), rtol=1e-5, atol=1e-5)


def test_scalar_affine_after_a_transposed_conv_folds_into_it():
    model = _ahead_model([1, 1, 1, 1], "Mul", transposed_tail=True)
    given = onnx.ModelProto.FromString(model.SerializeToString())
    wt = numpy_helper.to_array(given.graph.initializer[3])
    assert sorted(fold_conv_affine(model)) == ["ahead", "tail_add", "tail_mul"]
    got = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    bias = next(n.input[2] for n in model.graph.node if n.op_type == "ConvTranspose")
    # weights (in 6, out 1 per group, ...) in 3 groups: 3 output channels, each bias S1 * 0 + B1
    assert np.allclose(got["wt"], S1 * wt) and np.allclose(got[bias], np.full(3, B1))
    x = np.random.default_rng(5).standard_normal((1, 4, 8, 8)).astype(np.float32)
    assert np.allclose(_outputs(model, x), _outputs(given, x), rtol=1e-5, atol=1e-5)


def test_a_fold_that_would_overflow_is_not_made():
    """float16 weights up to ~1000 times a Mul by 100 overflow float16: the Mul stays (a reviewer's
    reproduction; the original computes finite values)."""
    rng = np.random.default_rng(0)
    w = (300 * rng.standard_normal((8, 4, 3, 3))).astype(np.float16)
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Mul", ["r", "s"], ["rs"], name="mul"),
             helper.make_node("Conv", ["rs", "w"], ["y"], pads=[1] * 4, name="conv")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 8, 8, 8])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(100.0, np.float16), "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    assert fold_conv_affine(model) == []
    assert np.array_equal(numpy_helper.to_array(model.graph.initializer[0]), w)
