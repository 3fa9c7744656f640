"""Calibration of an ONNX model in onnxruntime.

The same sites, statistics, criteria and refit as the torch path; only the runner
differs: each batch runs the original model once with every site's input added as a
graph output, and the captured tensors are folded into running statistics before the
next batch (memory: one batch's site inputs). onnxruntime takes dynamic shapes, so
batches may have any batch size and sequence length the model accepts.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import torch

from ..errors import PlanError
from ..graph import DependencyGraph
from ..progress import progress
from .sites import Site
from .stats import SiteStats


def onnx_batches(model: onnx.ModelProto, calib) -> list[dict[str, np.ndarray]]:
    """Calibration batches as onnxruntime feeds: a dict of input name -> array, or a
    tuple/list of arrays in the model's input order."""
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    out = []
    for k, batch in enumerate(calib):
        if isinstance(batch, dict):
            feeds = dict(batch)
        elif isinstance(batch, (tuple, list)):
            feeds = dict(zip(names, batch))
        else:
            feeds = {names[0]: batch} if len(names) == 1 else None
        if feeds is None or set(feeds) != set(names):
            raise PlanError(f"calibration batch {k} must give the model's inputs {names} (a dict by name, or a "
                            f"tuple in this order); it gives {sorted(feeds) if feeds else type(batch).__name__}")
        out.append({n: np.asarray(v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v)
                    for n, v in feeds.items()})
    if not out:
        raise PlanError("calib= holds no batches; pass a list of example batches, or leave it out")
    return out


def collect_onnx(model: onnx.ModelProto, batches: list[dict[str, np.ndarray]], sites: list[Site],
                 gram: set[str]) -> dict[str, SiteStats]:
    """Statistics of every site's input, from the original model run in onnxruntime."""
    from ..onnx_prune import _session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    inputs = {i.name for i in probe.graph.input}
    wanted = sorted({s.x for s in sites} - inputs)  # a site reading a graph input reads the feed
    for name in wanted:
        if name not in outputs:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    try:
        sess = _session(probe)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise PlanError(f"onnxruntime cannot run the model to calibrate it: {exc}") from exc
    stats = {s.node: SiteStats(s) for s in sites}
    by_value: dict[str, list[Site]] = {}
    for s in sites:
        by_value.setdefault(s.x, []).append(s)
    for k in progress(range(len(batches)), "calibrating (onnxruntime)", len(batches)):
        try:
            got = sess.run(wanted, batches[k])
        except Exception as exc:  # a wrong name, dtype or shape: onnxruntime's message says which
            raise PlanError(f"calibration batch {k} does not run in onnxruntime: {str(exc).splitlines()[0]}. "
                            "Give arrays with the model's input names, dtypes and shapes") from exc
        valid = _valid(batches[k])
        fed = [(n, batches[k][n]) for n in sorted({s.x for s in sites} & inputs)]
        for name, arr in list(zip(wanted, got)) + fed:
            x = torch.from_numpy(np.ascontiguousarray(arr))
            for s in by_value[name]:
                stats[s.node].add(x, s.node in gram, valid, k)
    return stats


def _valid(feeds: dict[str, Any]) -> torch.Tensor | None:
    mask = feeds.get("attention_mask")
    return torch.from_numpy(np.asarray(mask)) if mask is not None and np.ndim(mask) == 2 else None


def initializer_tensors(dg: DependencyGraph) -> dict[str, np.ndarray]:
    """Float initializers by name (what criteria and refits read)."""
    from onnx import numpy_helper

    model = dg.extra["onnx"]
    return {i.name: numpy_helper.to_array(i).astype(np.float32) for i in model.graph.initializer
            if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)}
