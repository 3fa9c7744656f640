"""Per-op ONNX coupling: Conv(3->8) -> OP -> Conv(8->4), built with onnx.helper.

For each op the 8-channel space between the convs must be found (with the op's
own per-channel initializers in it) and pruned as ONNX with the oracle holding
in onnxruntime, or be reported inexact when the op normalises across channels.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune as gp
from graphprune.reasons import OP_ARGUMENT

RNG = np.random.default_rng(0)


def _init(name, shape, positive=False):
    a = RNG.standard_normal(shape).astype(np.float32)
    return numpy_helper.from_array(np.abs(a) + 0.5 if positive else a, name)


def _ints(name, values):
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


# op name -> (nodes from "h" to "a", extra initializers, expected extra members of the 8-group, exact?)
CASES = {
    "InstanceNormalization": ([helper.make_node("InstanceNormalization", ["h", "s", "b"], ["a"])],
                              [_init("s", [8], True), _init("b", [8])], {"s", "b"}, True),
    "GroupNormalization": ([helper.make_node("GroupNormalization", ["h", "s", "b"], ["a"], num_groups=2)],
                           [_init("s", [8], True), _init("b", [8])], {"s", "b"}, False),
    "PRelu": ([helper.make_node("PRelu", ["h", "slope"], ["a"])], [_init("slope", [8, 1, 1])], {"slope"}, True),
    "LeakyRelu": ([helper.make_node("LeakyRelu", ["h"], ["a"], alpha=0.1)], [], set(), True),
    "Erf": ([helper.make_node("Erf", ["h"], ["a"])], [], set(), True),
    "Tanh": ([helper.make_node("Tanh", ["h"], ["a"])], [], set(), True),
    "Cast": ([helper.make_node("Cast", ["h"], ["a"], to=TensorProto.FLOAT)], [], set(), True),
    "Clip": ([helper.make_node("Clip", ["h", "lo", "hi"], ["a"])],
             [numpy_helper.from_array(np.float32(0.0), "lo"), numpy_helper.from_array(np.float32(6.0), "hi")],
             set(), True),
    "Resize": ([helper.make_node("Resize", ["h", "", "sc"], ["a"], mode="nearest")],
               [numpy_helper.from_array(np.asarray([1, 1, 2, 2], dtype=np.float32), "sc")], set(), True),
    "Pad": ([helper.make_node("Pad", ["h", "pads"], ["a"], mode="constant")],
            [_ints("pads", [0, 0, 1, 1, 0, 0, 1, 1])], set(), True),
    "Tile": ([helper.make_node("Tile", ["h", "reps"], ["a"])], [_ints("reps", [1, 1, 2, 2])], set(), True),
    "ReduceSum": ([helper.make_node("ReduceSum", ["h", "axes"], ["a"], keepdims=1)], [_ints("axes", [2, 3])],
                  set(), True),
    "Softmax": ([helper.make_node("Softmax", ["h"], ["a"], axis=1)], [], set(), False),
    # group norm over 2 groups: whole groups prune exactly, channels within a group do not
    # (the default roles prune whole groups only)
    "AveragePool": ([helper.make_node("AveragePool", ["h"], ["a"], kernel_shape=[2, 2], strides=[2, 2])], [],
                    set(), True),
    "HardSigmoid_Mul": ([helper.make_node("HardSigmoid", ["h"], ["g"]), helper.make_node("Mul", ["h", "g"], ["a"])],
                        [], set(), True),
}


def _model(op: str) -> onnx.ModelProto:
    nodes, inits, _, _ = CASES[op]
    w1, b1, w2 = _init("w1", [8, 3, 3, 3]), _init("b1", [8]), _init("w2", [4, 8, 1, 1])
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1, 1, 1, 1])] + nodes
        + [helper.make_node("Conv", ["a", "w2"], ["y"])], op,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, "h", "w"])], [w1, b1, w2] + inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("op", sorted(CASES))
def test_onnx_op_couples_and_prunes(op, tmp_path):
    onnx.save(_model(op), tmp_path / "m.onnx")
    g = gp.load_onnx(tmp_path / "m.onnx")
    _, _, extra, exact = CASES[op]
    eight = [grp for grp in g.prunable_groups(("channel", "outer", "inner")) if {"w1", "w2"} <= {m.name for m in grp.members}]
    assert eight, g.summary()
    members = {m.name for grp in eight for m in grp.members}
    assert {"w1", "b1", "w2"} | extra == members
    assert all(grp.exact for grp in eight) == exact
    report = gp.prune_onnx(tmp_path / "m.onnx", tmp_path / "slim.onnx", ratio=0.5, round_to=1, measure_latency=False)
    assert report.oracle.passed, report.oracle
    pruned_inexact = {gid for gid, idx in report.plan.pruned.items() if idx and not g.group(gid).exact}
    assert set(report.oracle.inexact_groups) == pruned_inexact  # named, never passed silently
    assert report.oracle.checked_groups or pruned_inexact
    slim = onnx.load(tmp_path / "slim.onnx")
    w1 = next(numpy_helper.to_array(i) for i in slim.graph.initializer if i.name == "w1")
    assert w1.shape[0] < 8


def test_float_op_arguments_are_not_channels(tmp_path):
    # Resize's scales are a float initializer of length 4: an argument, never a group to prune.
    onnx.save(_model("Resize"), tmp_path / "m.onnx")
    g = gp.load_onnx(tmp_path / "m.onnx")
    (scales,) = [grp for grp in g.groups if {m.name for m in grp.members} == {"sc"}]
    assert not scales.prunable and scales.frozen[-1].kind == OP_ARGUMENT and "op argument" in str(scales.frozen[-1])
