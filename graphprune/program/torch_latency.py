"""Latency of a PyTorch model in onnxruntime, exported in memory: what TorchProgram.latency_ms
reports for the runtime a deployment most often uses."""
from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path

import torch

from ..io.onnx_export import export_onnx
from ..planning.measure import best_of, ort_session
from ..util.torch_compat import tree_leaves
from .onnx_program import OnnxProgram


def onnxruntime_latency(model: torch.nn.Module, args: tuple, kwargs: dict) -> float:
    """Export in memory and time in onnxruntime. The TorchScript exporter takes a second where the
    default (dynamo) exporter takes many, and only the speed is read here; a model it cannot
    export goes through graphprune.export_onnx, which checks what it writes."""
    try:
        buf = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, args, buf, kwargs=kwargs or None, dynamo=False, opset_version=17)
        sess = ort_session(buf.getvalue())
        feeds = {i.name: a.detach().cpu().numpy() for i, a in zip(sess.get_inputs(), _flat_inputs(args, kwargs))}
        sess.run(None, feeds)
        return best_of(lambda: sess.run(None, feeds), budget_s=0.25)
    except Exception:  # noqa: BLE001 - the legacy exporter or the feed mapping failed: take the checked path
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            export_onnx(model, args, path, kwargs, dynamic_batch=False)
            return OnnxProgram.load(path).latency_ms()


def _flat_inputs(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    return [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
