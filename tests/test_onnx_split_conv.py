"""A Split of a convolution's activated output written as one convolution per piece
(graphprune/frontends/onnx_split_conv.py): the same outputs, only where every op between them acts
elementwise or per channel and a convolution reads a piece, and prune_onnx through it."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune as gp
from graphprune.frontends.onnx_split_conv import split_conv_pieces

C = 8  # the split convolution's channels, cut 3 + 5 unless a test says otherwise


def _init(rng, name, *shape):
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.5).astype(np.float32), name)


def _model(act="silu", sizes=(3, 5), opset=17, group=1, axis=1, extra_read=False, dead=False,
           head=False, bn=False) -> onnx.ModelProto:
    """x(1,4,6,6) -> Conv(C) -> act -> Split(sizes) -> [a, b]; a C2f-like tail: b -> Conv -> Add(b) ->
    Concat(a, .) -> Conv -> y. ``head``: the pieces go to Sigmoid and Relu outputs instead (no
    convolution reads them); ``dead``: piece a is read by nothing; ``extra_read``: the convolution's
    output is also a graph output."""
    rng = np.random.default_rng(0)
    inits = [_init(rng, "w", C, 4 // group, 3, 3), _init(rng, "b", C)]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1], group=group)]
    x = "c"
    if bn:
        inits += [_init(rng, "g", C), _init(rng, "beta", C), _init(rng, "mu", C),
                  numpy_helper.from_array(rng.uniform(0.5, 2, C).astype(np.float32), "var")]
        nodes.append(helper.make_node("BatchNormalization", ["c", "g", "beta", "mu", "var"], ["n"], name="bn"))
        x = "n"
    if act == "silu":
        nodes += [helper.make_node("Sigmoid", [x], ["s"], name="sig"), helper.make_node("Mul", [x, "s"], ["act"], name="mul")]
    elif act == "clip":
        inits += [numpy_helper.from_array(np.array(0, np.float32), "lo"), numpy_helper.from_array(np.array(6, np.float32), "hi")]
        nodes.append(helper.make_node("Clip", [x, "lo", "hi"], ["act"], name="clip"))
    elif act == "softmax":  # mixes channels: not elementwise
        nodes.append(helper.make_node("Softmax", [x], ["act"], name="sm", axis=1))
    else:
        nodes.append(helper.make_node("Identity", [x], ["act"], name="id"))
    a, b = sizes if sizes else (C // 2, C // 2)
    split_in = [] if sizes is None else ["sizes"]
    if sizes is not None and opset >= 13:
        inits.append(numpy_helper.from_array(np.array(sizes, np.int64), "sizes"))
    kw = {"split": list(sizes)} if sizes is not None and opset < 13 else {}
    kw.update({"num_outputs": 2} if sizes is None and opset >= 18 else {})
    nodes.append(helper.make_node("Split", ["act", *(split_in if opset >= 13 else [])], ["pa", "pb"], name="split",
                                  axis=axis, **kw))
    outs = []
    if head:
        nodes += [helper.make_node("Sigmoid", ["pa"], ["ya"], name="ha"), helper.make_node("Relu", ["pb"], ["yb"], name="hb")]
        outs = [("ya", a), ("yb", b)]
    else:
        inits += [_init(rng, "w2", b, b, 3, 3), _init(rng, "w3", 6, (b if dead else a + b), 1, 1)]
        nodes += [helper.make_node("Conv", ["pb", "w2"], ["q"], name="conv2", pads=[1, 1, 1, 1]),
                  helper.make_node("Add", ["pb", "q"], ["r"], name="add"),
                  helper.make_node("Concat", ["r"] if dead else ["pa", "r"], ["cat"], name="cat", axis=1),
                  helper.make_node("Conv", ["cat", "w3"], ["y"], name="conv3")]
        outs = [("y", 6)]
    out_vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, c, 6, 6]) for n, c in outs]
    if extra_read:
        out_vi.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, C, 6, 6]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
                              out_vi, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _run(model: onnx.ModelProto) -> list[np.ndarray]:
    x = np.random.default_rng(1).standard_normal((1, 4, 6, 6)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


@pytest.mark.parametrize("case", ["silu", "clip", "batchnorm", "opset 11 split attribute", "opset 18 num_outputs",
                                  "opset 13 equal pieces"])
def test_the_split_becomes_convolutions_with_the_same_outputs(case):
    kw = {"silu": {}, "clip": dict(act="clip"), "batchnorm": dict(bn=True),
          "opset 11 split attribute": dict(opset=11), "opset 18 num_outputs": dict(opset=18, sizes=None),
          "opset 13 equal pieces": dict(opset=13, sizes=None)}[case]
    model = _model(**kw)
    want = _run(model)
    assert split_conv_pieces(model) == ["split"]
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert "Split" not in ops and ops.count("Conv") == 4  # two pieces, then conv2 and conv3
    pieces = [n for n in model.graph.node if n.op_type == "Conv" and n.input[0] == "x"]
    widths = sorted(numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == p.input[1])).shape[0]
                    for p in pieces)
    assert widths == sorted(kw.get("sizes", (3, 5)) or (C // 2, C // 2))
    names = {i.name for i in model.graph.initializer}
    assert not {"w", "b", "sizes"} & names  # the whole convolution's weights went with it
    np.testing.assert_allclose(_run(model)[0], want[0], rtol=1e-5, atol=1e-5)


def test_a_piece_nobody_reads_is_not_computed():
    model = _model(dead=True)
    want = _run(model)
    assert split_conv_pieces(model) == ["split"]
    pieces = [n for n in model.graph.node if n.op_type == "Conv" and n.input[0] == "x"]
    assert len(pieces) == 1 and pieces[0].output[0] != "c"
    w = next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == pieces[0].input[1])
    assert w.shape[0] == 5  # piece b's channels 3..7 alone
    np.testing.assert_allclose(_run(model)[0], want[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("why", ["depthwise", "not along the channels", "the conv's output read elsewhere",
                                 "an op that mixes channels", "no convolution reads a piece", "IR version 3"])
def test_left_alone(why):
    """A grouped convolution's pieces would need their own groups; a split along height is no channel
    slice; a value read elsewhere must be computed whole anyway; a softmax over channels is not
    elementwise; a detector head's pieces leave the blocked layout anyway (PicoDet ran 0-3% slower);
    before IR 4 a new initializer must also be declared as a graph input."""
    kw = {"depthwise": dict(group=4, sizes=(4, 4)), "not along the channels": dict(axis=2, sizes=(3, 3)),
          "the conv's output read elsewhere": dict(extra_read=True), "an op that mixes channels": dict(act="softmax"),
          "no convolution reads a piece": dict(head=True), "IR version 3": {}}[why]
    model = _model(**kw)
    if why == "IR version 3":  # before IR 4 every initializer is also a graph input
        model.ir_version = 3
    before = model.SerializeToString()
    assert split_conv_pieces(model) == [] and model.SerializeToString() == before


def test_prune_onnx_prunes_through_the_pieces(tmp_path):
    onnx.save(_model(), str(tmp_path / "m.onnx"))
    rep = gp.prune_onnx(tmp_path / "m.onnx", tmp_path / "p.onnx", ratio=0.5, round_to=1, runtime=None)
    note = next(n for n in rep.notes if n.startswith("rewritten for onnxruntime:"))
    assert "1 Split(s) of a convolution's output along its channels written as one convolution per piece" in note, note
    assert rep.oracle.verdict == "PASS", rep
    pruned = onnx.load(str(tmp_path / "p.onnx"))
    assert "Split" not in [n.op_type for n in pruned.graph.node]
    assert rep.macs_after < rep.macs_before
