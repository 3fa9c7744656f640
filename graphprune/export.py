"""Export a (pruned) model to ONNX, validated: onnx.checker, then onnxruntime
against PyTorch on the example inputs. The file appears atomically, only once
every check has passed."""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import GraphpruneError


@dataclass
class ExportReport:
    path: str
    max_abs_diff: float
    atol: float
    dynamic_batch: bool = True
    note: str = ""  # why the batch axis is static, when it was asked to be dynamic

    def __str__(self) -> str:
        s = f"exported {self.path}: onnxruntime vs PyTorch max |diff| = {self.max_abs_diff:.3g} (atol {self.atol:g})"
        return s + (f"; static batch: {self.note}" if self.note else "")


@contextlib.contextmanager
def quiet_torch():
    """torch.export/onnx log full tracebacks and warnings for conditions we report ourselves."""
    loggers = [logging.getLogger(n) for n in ("torch._subclasses.fake_tensor", "torch.onnx", "torch.export",
                                               "torch._export", "torch.fx.experimental.symbolic_shapes")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def export_onnx(model: torch.nn.Module, args: tuple, path: str | os.PathLike, kwargs: dict | None = None,
                dynamic_batch: bool = True, atol: float = 1e-4, opset: int | None = None) -> ExportReport:
    """Export ``model`` to ``path`` and check it in onnxruntime against PyTorch.

    Example:
        >>> import torch, graphprune, tempfile, os
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU()).eval()
        >>> r = graphprune.export_onnx(m, (torch.randn(2, 4),), os.path.join(tempfile.mkdtemp(), "m.onnx"))
        >>> r.max_abs_diff < 1e-4
        True
    """
    import onnx
    import onnxruntime as ort

    args = args if isinstance(args, tuple) else (args,)
    kwargs = kwargs or {}
    path = Path(path)
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} if isinstance(a, torch.Tensor) and a.dim() > 0 else None for a in args)
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx.tmp", dir=path.parent)
    os.close(fd)
    try:
        note = ""
        with quiet_torch():
            try:
                prog = torch.onnx.export(model, args, kwargs=kwargs or None, dynamo=True, opset_version=opset,
                                         dynamic_shapes=dynamic_shapes, verbose=False)
            except Exception as exc:  # the exporter raises many types; the static retry decides
                if not dynamic_batch:
                    raise
                # Some models fix the batch size internally: export a static batch, and say why.
                note = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                prog = torch.onnx.export(model, args, kwargs=kwargs or None, dynamo=True, opset_version=opset,
                                         verbose=False)
            prog.save(tmp)
        onnx.checker.check_model(tmp, full_check=True)
        sess = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        feeds = {i.name: t.detach().cpu().numpy() for i, t in zip(
            sess.get_inputs(), [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)])}
        got = sess.run(None, feeds)
        with torch.no_grad():
            want = [t.detach().cpu().numpy() for t in torch.utils._pytree.tree_leaves(model(*args, **kwargs))
                    if isinstance(t, torch.Tensor)]
        if len(got) != len(want) or any(g.shape != w.shape for g, w in zip(got, want)):
            raise GraphpruneError(f"ONNX outputs {[g.shape for g in got]} do not match PyTorch {[w.shape for w in want]}")
        diff = max((float(np.abs(g.astype(np.float64) - w.astype(np.float64)).max()) for g, w in zip(got, want)
                    if g.size), default=0.0)
        if diff > atol:
            raise GraphpruneError(f"onnxruntime differs from PyTorch by {diff:.3g} (> atol {atol:g}); "
                                  f"nothing was written to {path}")
        os.replace(tmp, path)
        return ExportReport(str(path), diff, atol, dynamic_batch and not note, note)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
