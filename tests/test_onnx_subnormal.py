"""Subnormal weights set to zero when an ONNX model is loaded for pruning
(graphprune/frontends/onnx_subnormal.py): which tensors, what it does to the outputs, and the note."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import graphprune as gp
from graphprune.frontends.onnx_subnormal import flush_subnormal_weights

TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32


def _model(path=None) -> onnx.ModelProto:
    """x -> 1x1 conv (8 -> 16; its last 6 output channels decayed to subnormal weights) -> relu ->
    1x1 conv (16 -> 4, a Constant node's tensor with one subnormal) ; a fed initializer and a
    float16 one with subnormals that must stay."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 8, 1, 1)).astype(np.float32)
    w1[10:] = (TINY / 8) * rng.standard_normal((6, 8, 1, 1)).astype(np.float32)
    w2 = rng.standard_normal((4, 16, 1, 1)).astype(np.float32)
    w2[0, 0, 0, 0] = TINY / 4
    fed = np.full((4, 1, 1), TINY / 2, dtype=np.float32)
    half = np.full((2,), 1e-7, dtype=np.float16)  # float16 subnormal: CPUs compute float16 in float32
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="c1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Constant", [], ["w2"], name="w2c", value=numpy_helper.from_array(w2, "w2")),
             helper.make_node("Conv", ["r", "w2"], ["z"], name="c2"),
             helper.make_node("Add", ["z", "bias"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6]),
                                           helper.make_tensor_value_info("bias", TensorProto.FLOAT, [4, 1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(fed, "bias"),
                               numpy_helper.from_array(half, "half")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if path is not None:
        onnx.save(model, str(path))
    return model


def _arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    out = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node if n.op_type == "Constant"})
    return out


def test_subnormal_float32_weights_become_zero_and_nothing_else_changes():
    model = _model()
    before = _arrays(model)
    assert flush_subnormal_weights(model) == (6 * 8 + 1, 2)
    after = _arrays(model)
    assert not after["w1"][10:].any() and np.array_equal(after["w1"][:10], before["w1"][:10])
    assert after["w2"][0, 0, 0, 0] == 0 and np.array_equal(after["w2"].ravel()[1:], before["w2"].ravel()[1:])
    assert np.array_equal(after["bias"], before["bias"])  # a graph input: the caller may feed another value
    assert np.array_equal(after["half"], before["half"]) and after["half"].dtype == np.float16
    assert flush_subnormal_weights(model) == (0, 0)  # nothing left to flush


def test_the_outputs_differ_by_less_than_a_subnormal_times_the_activations():
    x = np.random.default_rng(1).standard_normal((1, 8, 6, 6)).astype(np.float32)
    feeds = {"x": x, "bias": np.zeros((4, 1, 1), np.float32)}
    model = _model()
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    flush_subnormal_weights(model)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert np.abs(got - want).max() <= 1e-30


def test_prune_onnx_flushes_says_so_and_fuse_false_keeps_the_weights(tmp_path):
    src = tmp_path / "m.onnx"
    _model(src)
    report = gp.prune_onnx(src, tmp_path / "a.onnx", ratio=0.5, round_to=1, measure_latency=False)
    assert report.oracle.passed and any("49 subnormal weight(s)" in n and "2 tensor(s)" in n for n in report.notes)
    written = _arrays(onnx.load(str(tmp_path / "a.onnx")))
    assert not any(0 < abs(v) < TINY for name, a in written.items() if a.dtype == np.float32 and name != "bias"
                   for v in a.ravel())
    plain = gp.prune_onnx(src, tmp_path / "b.onnx", ratio=0.5, round_to=1, measure_latency=False, fuse=False)
    assert not any("subnormal" in n for n in plain.notes)


def test_constants_spelled_as_value_float_are_flushed_too():
    nodes = [helper.make_node("Constant", [], ["a"], name="ca", value_float=TINY / 2),
             helper.make_node("Constant", [], ["b"], name="cb", value_floats=[1.0, TINY / 4, 2.0]),
             helper.make_node("Mul", ["x", "a"], ["xa"], name="m"),
             helper.make_node("Add", ["xa", "b"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert flush_subnormal_weights(model) == (2, 2)
    assert model.graph.node[0].attribute[0].f == 0.0
    assert list(model.graph.node[1].attribute[0].floats) == [1.0, 0.0, 2.0]
