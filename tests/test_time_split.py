"""Where a pruned ONNX model's time stayed when its speedup falls well short of its MACs cut
(graphprune/report/time_split.py): SLANet halved its MACs for 1.06x, its time in a Loop the prune kept whole,
and the report did not say so."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import graphprune as gp


def _model(elements: int) -> onnx.ModelProto:
    """x -> Conv(3 -> 64) -> Relu -> Conv(64 -> 3) -> y, and beside it z (``elements`` values) -> Sin -> Exp
    -> t: time without MACs, which no channel group touches."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((64, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((3, 64, 3, 3)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="c2", pads=[1, 1, 1, 1]),
             helper.make_node("Sin", ["z"], ["s"], name="sin"), helper.make_node("Exp", ["s"], ["t"], name="exp")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16]),
                                           helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, elements])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 16, 16]),
                               helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, elements])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _note(report) -> str | None:
    return next((n for n in report.notes if n.startswith("speedup ") and "by op type" in n), None)


def test_the_report_says_which_op_types_hold_the_time_that_did_not_shrink(tmp_path):
    onnx.save(_model(2_000_000), str(tmp_path / "m.onnx"))
    rep = gp.prune_onnx(tmp_path / "m.onnx", tmp_path / "p.onnx", ratio=0.5, round_to=1)
    assert rep.macs_before / rep.macs_after > 1.9  # both convolutions halve
    note = _note(rep)
    assert note is not None, rep.notes
    shares = note.split("by op type: ")[1]
    assert shares.split(" ")[0] in ("Sin", "Exp"), note  # the op that holds the most time comes first
    assert "faster pruned" in note and "the original's time by op type" in note


def test_no_note_where_the_speedup_follows_the_cut(tmp_path):
    onnx.save(_model(16), str(tmp_path / "m.onnx"))  # the convolutions are all the time there is
    rep = gp.prune_onnx(tmp_path / "m.onnx", tmp_path / "p.onnx", ratio=0.5, round_to=1)
    if rep.latency.speedup >= 0.85 * rep.macs_before / rep.macs_after:
        assert _note(rep) is None
    else:  # a small model's fixed costs can hold it back too: then the note is due, and names the Conv
        assert "Conv" in _note(rep)
