"""Chains of scalar Mul/Add/Sub/Div on image tensors written as one BatchNormalization
(graphprune/frontends/onnx_channel_affine.py): the composed affine map, where it must not apply,
and a prune through the rewritten op."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphprune as gp
from graphprune.frontends.onnx_channel_affine import affine_as_batchnorm

S, B, D, T = 1.5, -0.25, 4.0, 0.75


def _model(opset: int = 13, elem=TensorProto.FLOAT, tap: bool = False, rank: int = 4, act: str = "Relu",
           flatten: bool = False) -> onnx.ModelProto:
    """x -> conv (padded) -> ``act`` -> Mul(S) -> Add(B) -> Div(D) -> Sub(T, .) -> conv (padded) -> y
    (``flatten``: Flatten instead of the second conv). ``tap``: Add's output is a second graph output
    (the chain must break there)."""
    dt = onnx.helper.tensor_dtype_to_np_dtype(elem)
    rng = np.random.default_rng(0)
    k = [3] * (rank - 2)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, *k)).astype(dt), "w1"),
             numpy_helper.from_array(rng.standard_normal((4, 8, *k)).astype(dt), "w2")]
    inits += [numpy_helper.from_array(np.array(v, dt), n) for n, v in (("s", S), ("b", B), ("d", D), ("t", T))]
    pads = [1] * (2 * (rank - 2))
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=pads),
             helper.make_node(act, ["c1"], ["r"], name="act"),
             helper.make_node("Mul", ["s", "r"], ["m"], name="mul"),
             helper.make_node("Add", ["m", "b"], ["a"], name="add"),
             helper.make_node("Div", ["a", "d"], ["q"], name="div"),
             helper.make_node("Sub", ["t", "q"], ["z"], name="sub"),
             helper.make_node("Flatten", ["z"], ["y"], name="flat") if flatten else
             helper.make_node("Conv", ["z", "w2"], ["y"], name="conv2", pads=pads)]
    outputs = [helper.make_tensor_value_info("y", elem, [1, 8 ** (rank - 1)] if flatten else [1, 4] + [8] * (rank - 2))]
    if tap:
        outputs.append(helper.make_tensor_value_info("a", elem, [1, 8] + [8] * (rank - 2)))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, [1, 3] + [8] * (rank - 2))],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_a_chain_becomes_one_batchnorm_with_the_composed_scale_and_bias():
    model = _model()
    given = onnx.ModelProto.FromString(model.SerializeToString())
    assert affine_as_batchnorm(model) == ["sub"]
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu", "BatchNormalization", "Conv"]
    bn = model.graph.node[2]
    got = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    # T - (S r + B) / D = (-S / D) r + (T - B / D), per channel (8 of them), mean 0, variance 1, epsilon 0
    want = [-S / D, T - B / D, 0.0, 1.0]
    assert all(np.allclose(got[name], np.full(8, v)) for name, v in zip(bn.input[1:], want))
    assert next(a.f for a in bn.attribute if a.name == "epsilon") == 0.0 and bn.output[0] == "z"
    assert not {"s", "b", "d", "t"} & set(got)  # the scalars nothing reads any more are gone
    onnx.checker.check_model(model)
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert np.allclose(_run(model, x)[0], _run(given, x)[0], rtol=1e-5, atol=1e-5)


def test_a_value_read_elsewhere_splits_the_chain():
    model = _model(tap=True)
    given = onnx.ModelProto.FromString(model.SerializeToString())
    # Mul -> Add ends at a value a graph output and the Div read (no op of the blocked layout): kept;
    # Div -> Sub, read by the conv, becomes one BatchNormalization
    assert affine_as_batchnorm(model) == ["sub"]
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu", "Mul", "Add", "BatchNormalization", "Conv"]
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert all(np.allclose(p, q, rtol=1e-5, atol=1e-5) for p, q in zip(_run(model, x), _run(given, x)))


@pytest.mark.parametrize("why", ["opset 8", "double", "rank 3", "after an Erf", "read by a Flatten"])
def test_left_alone(why):
    """Before opset 9 BatchNormalization had a training form; onnxruntime's CPU provider has no
    double one worth it; a rank-3 tensor is not an image (nothing to keep in the blocked layout);
    after an Erf the chain may be GELU's, which onnxruntime fuses itself; before a Flatten the value
    leaves the blocked layout anyway."""
    kw = {"opset 8": dict(opset=8), "double": dict(elem=TensorProto.DOUBLE), "rank 3": dict(rank=3),
          "after an Erf": dict(act="Erf"), "read by a Flatten": dict(flatten=True)}[why]
    model = _model(**kw)
    before = model.SerializeToString()
    assert affine_as_batchnorm(model) == [] and model.SerializeToString() == before


def test_prune_onnx_prunes_through_the_batchnorm(tmp_path):
    onnx.save(_model(), str(tmp_path / "m.onnx"))
    rep = gp.prune_onnx(tmp_path / "m.onnx", tmp_path / "p.onnx", ratio=0.5, round_to=1, runtime=None)
    note = next(n for n in rep.notes if n.startswith("rewritten for onnxruntime:"))
    assert "1 chain(s) of Mul/Add by a scalar written as one BatchNormalization" in note, note
    pruned = onnx.load(str(tmp_path / "p.onnx"))
    bn = next(n for n in pruned.graph.node if n.op_type == "BatchNormalization")
    scale = next(i for i in pruned.graph.initializer if i.name == bn.input[1])
    assert scale.dims[0] == 4  # half of conv1's 8 channels, the BatchNormalization's with them
    assert rep.macs_after < rep.macs_before


@pytest.mark.parametrize("importance", ["bn_scale", "l2"])
def test_the_new_batchnorm_does_not_vote_in_the_ranking(tmp_path, importance):
    """Its constants are the same in every channel: read as weights they would make bn_scale rank by
    channel index and lift every l2 score alike. Both criteria keep conv1's large filters, as without
    the rewrite (a reviewer's reproduction)."""
    model = _model()
    w1 = numpy_helper.to_array(model.graph.initializer[0]).copy()
    w1 *= np.array([0.01, 5, 0.02, 4, 0.03, 3, 0.04, 2], np.float32)[:, None, None, None]
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w1, "w1"))
    onnx.save(model, str(tmp_path / "m.onnx"))
    kept = {}
    for fuse in (False, True):
        gp.prune_onnx(tmp_path / "m.onnx", tmp_path / f"p{fuse}.onnx", ratio=0.5, round_to=1, runtime=None,
                      importance=importance, fuse=fuse)
        pruned = onnx.load(str(tmp_path / f"p{fuse}.onnx"))
        w = next(numpy_helper.to_array(i) for i in pruned.graph.initializer if i.name == "w1")
        kept[fuse] = [int(np.argmin([np.abs(w1[j] - row).max() for j in range(8)])) for row in w]
        assert ("BatchNormalization" in [n.op_type for n in pruned.graph.node]) == fuse
    assert kept[True] == kept[False] == [1, 3, 5, 7]  # the filters scaled by 5, 4, 3, 2


def test_a_scale_beyond_float32_is_not_written():
    """Mul(1e20) twice is 1e40: no float32 scale; the chain stays as it was."""
    model = _model()
    for t in model.graph.initializer:
        if t.name in ("s", "d"):
            t.CopyFrom(numpy_helper.from_array(np.array(1e20 if t.name == "s" else 1e-20, np.float32), t.name))
    assert affine_as_batchnorm(model) == []
