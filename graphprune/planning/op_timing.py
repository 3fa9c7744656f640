"""Single ops timed alone on a runtime, for the latency table (latency_table.py): a convolution
or matmul at given widths, and an Add of n elements (the price of memory traffic). Both runtimes
run on one thread, as whole models are timed (TorchProgram.latency_ms, OnnxProgram.latency_ms); a
PyTorch op runs on the model's device in its dtype (placement.py)."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .measure import best_of, ort_session
from .placement import CPU, Placement

BUDGET_S, LEAST = 0.02, 3  # an op is small: a short budget, at least three clean runs


def time_op(runtime: str, op, cin: int, cout: int, where: Placement = CPU) -> float:
    """One site op (latency_table.SiteOp) at ``cin`` inputs and ``cout`` outputs, best of runs (ms)."""
    rng = np.random.default_rng(0)
    if op.kind == "conv":
        groups = cin if op.depthwise else 1
        x = rng.standard_normal((op.x_shape[0], cin) + op.x_shape[2:]).astype(np.float32)
        w = rng.standard_normal((cout, cin // groups) + op.w_shape[2:]).astype(np.float32)
    else:
        rows = int(math.prod(op.x_shape[:-1]))
        x = rng.standard_normal((rows, cin)).astype(np.float32)
        w = rng.standard_normal((cin, cout)).astype(np.float32)
    if runtime == "torch":
        import torch
        import torch.nn.functional as F

        tx, tw = (torch.from_numpy(a).to(where.device, where.torch_dtype()) for a in (x, w))
        if op.kind == "conv":
            conv = (F.conv1d, F.conv2d, F.conv3d)[tw.dim() - 3]  # a kernel of 1, 2 or 3 dims
            return _torch_best(lambda: conv(tx, tw, None, op.stride, op.padding, op.dilation,
                                            cin if op.depthwise else 1), where)
        return _torch_best(lambda: tx @ tw, where)
    from onnx import helper

    if op.kind == "conv":
        node = helper.make_node("Conv", ["x", "w"], ["y"], strides=list(op.stride), dilations=list(op.dilation),
                                pads=list(op.padding) * 2, group=cin if op.depthwise else 1)
    else:
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
    return _onnx_best(node, {"x": x}, {"w": w})


def time_add(runtime: str, n: int, where: Placement = CPU) -> float:
    """One Add of two vectors of ``n`` elements (float32; PyTorch: ``where``'s dtype), best of runs (ms)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    if runtime == "torch":
        import torch

        ta, tb = (torch.from_numpy(v).to(where.device, where.torch_dtype()) for v in (a, b))
        return _torch_best(lambda: ta + tb, where)
    from onnx import helper

    return _onnx_best(helper.make_node("Add", ["a", "b"], ["y"]), {"a": a, "b": b}, {})


def _torch_best(fn: Callable[[], object], where: Placement) -> float:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return best_of(where.synced(fn), budget_s=BUDGET_S, least=LEAST)
    finally:
        torch.set_num_threads(threads)


def _onnx_best(node, feeds: dict[str, np.ndarray], weights: dict[str, np.ndarray]) -> float:
    """``node`` as a one-op ONNX model (inputs ``feeds``, initializers ``weights``), timed."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph([node], "op", [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape))
                                             for k, v in feeds.items()],
                              [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = ort_session(model.SerializeToString())
    return best_of(lambda: sess.run(None, feeds), budget_s=BUDGET_S, least=LEAST)
