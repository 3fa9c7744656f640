"""Integer arithmetic an exporter spells out as ops (graphprune/frontends/onnx_int_eval.py): torch's
F.pad chain (Concat, ConstantOfShape, Reshape(-1, 2), a reversed Slice, Transpose, Cast) evaluated,
so a spatial Pad leaves the channels it passes through prunable."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

import graphprune as gp
from graphprune.frontends.onnx_lower import lower


class _Padded(nn.Module):
    """TF-style 'same' padding (EfficientNet-Lite's static padding): ZeroPad2d before a stride-2 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.pad = nn.ZeroPad2d((0, 1, 2, 3))  # left, right, top, bottom
        self.b = nn.Conv2d(16, 8, 3, stride=2)

    def forward(self, x):
        return self.b(self.pad(torch.relu(self.a(x))))


def _export(path) -> None:
    torch.manual_seed(0)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Padded().eval(), (torch.randn(1, 3, 12, 12),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}})


def test_the_pad_list_torch_computes_is_evaluated(tmp_path):
    _export(tmp_path / "m.onnx")
    model = onnx.load(str(tmp_path / "m.onnx"))
    pad = next(n for n in model.graph.node if n.op_type == "Pad")
    assert not any(i.name == pad.input[1] for i in model.graph.initializer)  # computed, not written out
    g = lower(model)
    node = next(n for n in g.nodes if n.op == "onnx.Pad")
    # ONNX pads: every dim's begin (N, C, H, W), then every dim's end; ZeroPad2d((l, r, t, b)) pads
    # H by (t, b) and W by (l, r)
    assert g.values[node.args[1].name].data == (0, 0, 2, 0, 0, 0, 3, 1)


def test_channels_through_a_computed_pad_are_pruned_exactly(tmp_path):
    _export(tmp_path / "m.onnx")
    report = gp.prune_onnx(tmp_path / "m.onnx", tmp_path / "out.onnx", ratio=0.5, round_to=1, runtime=None,
                           verify=True)
    assert report.oracle is not None and report.oracle.passed
    assert report.kept and all(k < s for k, s in report.kept.values()), report.kept
    x = np.random.default_rng(0).standard_normal((2, 3, 12, 12)).astype(np.float32)
    want, got = (ort.InferenceSession(str(tmp_path / f)).run(None, {"x": x})[0] for f in ("m.onnx", "out.onnx"))
    assert got.shape == want.shape  # the pad still pads H and W alone (the oracle checked the values)
    slim = onnx.load(str(tmp_path / "out.onnx"))
    conv_a = next(i for i in slim.graph.initializer if tuple(i.dims)[1:] == (3, 3, 3))
    assert conv_a.dims[0] == 8  # 16 channels, half pruned


def _int_graph(nodes, inits: dict, out: str, out_shape) -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(nodes, "ints", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info(out, TensorProto.INT64, out_shape)],
                              [numpy_helper.from_array(np.asarray(v, np.int64), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_integer_division_truncates_toward_zero_as_onnx_does():
    from onnx import helper

    # ONNX Div on integers truncates: -7 / 2 = -3 (numpy's floor division would give -4)
    m = _int_graph([helper.make_node("Div", ["a", "b"], ["q"])], {"a": [-7, 7, -8], "b": [2, 2, -3]}, "q", [3])
    assert lower(m).values["q"].data == (-3, 3, 2)


def test_a_large_constant_of_shape_is_not_built():
    from onnx import helper

    m = _int_graph([helper.make_node("ConstantOfShape", ["s"], ["z"], value=helper.make_tensor(
        "v", onnx.TensorProto.INT64, [1], [0]))], {"s": [1, 1, 512, 512]}, "z", [1, 1, 512, 512])
    assert lower(m).values["z"].data is None  # a mask-sized tensor is left unknown, not materialised
