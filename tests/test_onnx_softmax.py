"""A Softmax behind a Transpose moved ahead of it where onnxruntime's own transpose gets cheaper
(graphprune/frontends/onnx_softmax.py): bit-identical outputs, only where the axis class improves,
never where the transposed value has other readers, and prune_onnx's use of it."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune as gp
from graphprune.frontends.onnx_softmax import softmax_ahead_of_transpose

SHAPE = [2, 4, 6, 5]


def _model(perm, axis, op="Softmax", opset=17, extra_out=False) -> onnx.ModelProto:
    """x -> Transpose(perm) -> op(axis) -> y (``extra_out``: the transposed value is an output too)."""
    out_shape = [SHAPE[p] for p in perm]
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="tr", perm=list(perm)),
             helper.make_node(op, ["t"], ["y"], name="sm", axis=axis)]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)]
    if extra_out:
        outs.append(helper.make_tensor_value_info("t", TensorProto.FLOAT, out_shape))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)], outs,
                              value_info=[] if extra_out else [
                                  helper.make_tensor_value_info("t", TensorProto.FLOAT, out_shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


# (perm, axis, where the softmax goes): onnxruntime computes on the last axis, swaps the second to
# last one with it on a fast path and any other axis by a general permutation; a move is made only
# to a cheaper class of axis: 2 -> 1 or 0, 1 -> 0
MOVED = [((0, 2, 1, 3), 1, 2),  # YOLOv8's box head: axis 1 of the transposed value is axis 2 before it
         ((0, 3, 1, 2), 1, 3),
         ((0, 1, 3, 2), 2, 3),
         ((0, 2, 3, 1), -3, 2),
         ((2, 0, 1, 3), 0, 2)]
KEPT = [((0, 2, 3, 1), 3),  # channels-last: the softmax already runs on the last axis
        ((0, 2, 1, 3), -1),
        ((0, 3, 2, 1), 2),  # the axis stays axis 2 either way
        ((0, 1, 3, 2), 1),  # axis 1 -> 1: the same class
        ((0, 3, 1, 2), 3),  # last -> second to last: dearer
        ((1, 0, 2, 3), 0)]  # axis 0 -> 1, both general permutations in rank 4


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("perm,axis,to", MOVED)
def test_a_softmax_moves_ahead_to_a_cheaper_axis_with_identical_outputs(perm, axis, to, op):
    model = _model(perm, axis, op)
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32) * 4
    want = _run(model, x)
    assert softmax_ahead_of_transpose(model) == ["sm"]
    onnx.checker.check_model(model, full_check=True)
    first, second = model.graph.node
    assert (first.op_type, second.op_type) == (op, "Transpose")
    assert first.input[0] == "x" and second.output[0] == "y" and list(second.attribute[0].ints) == list(perm)
    assert next(a.i for a in first.attribute if a.name == "axis") == to
    assert "t" not in {v.name for v in model.graph.value_info}  # the old transposed value's shape went with it
    np.testing.assert_array_equal(_run(model, x)[0], want[0])


@pytest.mark.parametrize("perm,axis", KEPT)
def test_no_move_where_the_axis_would_not_get_cheaper(perm, axis):
    model = _model(perm, axis)
    before = model.SerializeToString()
    assert softmax_ahead_of_transpose(model) == []
    assert model.SerializeToString() == before


def test_before_opset_13_a_softmax_flattens_its_trailing_axes_and_is_left():
    model = _model((0, 2, 1, 3), 1, opset=12)
    assert softmax_ahead_of_transpose(model) == []


def test_a_transposed_value_read_elsewhere_is_left():
    assert softmax_ahead_of_transpose(_model((0, 2, 1, 3), 1, extra_out=True)) == []
    model = _model((0, 2, 1, 3), 1)
    model.graph.node.append(helper.make_node("Relu", ["t"], ["r"], name="relu"))
    model.graph.output.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    assert softmax_ahead_of_transpose(model) == []


def test_new_names_avoid_existing_ones_and_the_rewrite_is_deterministic():
    def build():
        model = _model((0, 2, 1, 3), 1)
        model.graph.node.append(helper.make_node("Identity", ["y"], ["sm_ahead"], name="id"))
        model.graph.output.append(helper.make_tensor_value_info("sm_ahead", TensorProto.FLOAT, [2, 6, 4, 5]))
        return model
    a, b = build(), build()
    softmax_ahead_of_transpose(a)
    softmax_ahead_of_transpose(b)
    assert a.SerializeToString() == b.SerializeToString()
    onnx.checker.check_model(a, full_check=True)
    assert a.graph.node[0].output[0] not in ("sm_ahead", "t")


def _dfl_head(tmp_path) -> str:
    """A YOLOv8-style box head: conv -> relu -> conv to 4 x 16 bins -> Reshape(1, 4, 16, HW) ->
    Transpose(0, 2, 1, 3) -> Softmax(axis=1) -> a 1x1 conv with weights 0..15 (the expected bin)."""
    rng = np.random.default_rng(1)
    c, hw = 16, 8
    inits = [numpy_helper.from_array(rng.standard_normal((c, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((64, c, 1, 1)).astype(np.float32) * 0.3, "w2"),
             numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(1, 16, 1, 1), "bins"),
             numpy_helper.from_array(np.array([1, 4, 16, hw * hw], dtype=np.int64), "s4"),
             numpy_helper.from_array(np.array([1, 4, hw * hw], dtype=np.int64), "s3")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["box"], name="conv2"),
             helper.make_node("Reshape", ["box", "s4"], ["b4"], name="reshape"),
             helper.make_node("Transpose", ["b4"], ["bt"], name="tr", perm=[0, 2, 1, 3]),
             helper.make_node("Softmax", ["bt"], ["p"], name="dfl", axis=1),
             helper.make_node("Conv", ["p", "bins"], ["e"], name="expect"),
             helper.make_node("Reshape", ["e", "s3"], ["y"], name="out")]
    graph = helper.make_graph(nodes, "dfl", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, hw, hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, hw * hw])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = str(tmp_path / "dfl.onnx")
    onnx.save(model, path)
    return path


def test_prune_onnx_writes_the_moved_softmax_and_the_oracle_holds(tmp_path):
    src = _dfl_head(tmp_path)
    dst = tmp_path / "out.onnx"
    report = gp.prune_onnx(src, dst, ratio=0.5, round_to=1, measure_latency=False)
    assert report.oracle.passed and report.oracle.checked_groups, str(report.oracle)
    assert any(n.startswith("rewritten for onnxruntime: 1 softmax op(s) moved") and "dfl" in n for n in report.notes)
    out = onnx.load(str(dst))
    soft = next(n for n in out.graph.node if n.op_type == "Softmax")
    assert soft.input[0] == "b4" and next(a.i for a in soft.attribute if a.name == "axis") == 2
    plain = gp.prune_onnx(src, tmp_path / "plain.onnx", ratio=0.5, round_to=1, measure_latency=False, fuse=False)
    kept = next(n for n in onnx.load(str(tmp_path / "plain.onnx")).graph.node if n.op_type == "Softmax")
    assert kept.input[0] == "bt" and not any(n.startswith("rewritten for onnxruntime:") for n in plain.notes)


def test_an_unnamed_softmax_gets_a_name_no_node_has():
    """Unnamed, the softmax is named after its output; another node may already carry that name
    (onnxruntime refuses two nodes of one name, onnx.checker does not)."""
    model = _model((0, 2, 1, 3), 1)
    model.graph.node[1].name = ""
    model.graph.node.append(helper.make_node("Relu", ["y"], ["r"], name="y"))
    model.graph.output.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [2, 6, 4, 5]))
    x = np.random.default_rng(2).standard_normal(SHAPE).astype(np.float32)
    want = _run(model, x)
    assert len(softmax_ahead_of_transpose(model)) == 1
    names = [n.name for n in model.graph.node]
    assert len(set(names)) == len(names), names
    for got, ref in zip(_run(model, x), want):
        np.testing.assert_array_equal(got, ref)
