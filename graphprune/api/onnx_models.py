"""ONNX in, ONNX out: prune_onnx and verify_onnx, thin callers of the pipeline."""
from __future__ import annotations

import numbers
import os
from pathlib import Path
from typing import Mapping

import onnx

from ..errors import PlanError
from ..graph import DependencyGraph
from ..options import PruneOptions
from ..oracle import OracleReport, run_oracle
from ..pipeline import prune_program
from ..planning.plan import PrunePlan
from ..program.onnx_program import OnnxProgram, probe_inputs  # noqa: F401  (probe_inputs: public helper)
from ..report.prune_report import PruneReport
from ..util.atomic import check_writable

OnnxPruneReport = PruneReport  # one report type for both front-ends (latency and path are filled here)


def _program(dg: DependencyGraph, model: onnx.ModelProto | None = None) -> OnnxProgram:
    program = dg.program
    if not isinstance(program, OnnxProgram):
        raise PlanError("this graph was not loaded from ONNX (graphprune.load_onnx); a PyTorch graph goes to "
                        "graphprune.plan / graphprune.prune")
    if model is not None and model is not program.model:
        raise PlanError("verify_onnx: the model is not the one this graph was loaded from; load it with "
                        "graphprune.load_onnx and pass that graph")
    return program


def _check_paths(src: Path, dst: Path) -> None:
    """Refused before any work: an output that is the input (it would be replaced), one that is
    named as another format (ONNX bytes under .pt), or one that cannot be written."""
    if dst.suffix.lower() in (".pt", ".pth", ".gguf", ".safetensors", ".json", ".npz"):
        raise PlanError(f"prune_onnx writes an ONNX file: dst '{dst}' names another format; give a .onnx path")
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise PlanError(f"dst '{dst}' is the input file: the pruned model would replace it; choose another dst")
    check_writable(dst, "dst")


def verify_onnx(model: onnx.ModelProto | None, dg: DependencyGraph, plan: PrunePlan, atol: float | None = None,
                trials: int = 2) -> OracleReport:
    """Pruned (exact groups) vs masked original, both run in onnxruntime; ``atol`` by default 1e-4, or
    the half-precision margin for a float16/bfloat16 model (program/onnx_precision.py)."""
    return run_oracle(_program(dg, model), plan, atol, trials)


ONNX_DEFAULTS = {"ratio": 0.3, "verify": True}  # the oracle's tolerance is the program's (1e-4, wider in float16)


def prune_onnx(src: str | os.PathLike, dst: str | os.PathLike, ratio: float | None = None, *,
               plan_: PrunePlan | None = None, input_shapes: Mapping[str, tuple] | None = None,
               inputs: Mapping | None = None, options: PruneOptions | None = None, **given) -> PruneReport:
    """Prune an ONNX file into a smaller one. Nothing is written unless every check passes
    (onnx.checker, the outputs' shapes in onnxruntime, and with ``verify`` the oracle).
    Options are the fields of :class:`graphprune.PruneOptions` (here ``ratio`` 0.3 and
    ``verify=True`` by default), as keyword arguments or whole as ``options=``.

    ``fuse=True`` first writes activations spelled as several ops (paddle2onnx's hard-swish as
    Add/Clip/Mul/Div) as the single ops onnxruntime runs inside its blocked layout, and moves a
    Softmax behind a Transpose ahead of it where onnxruntime transposes its axis faster (YOLOv8's
    box head), writes a Split of a convolution's output as one convolution per piece (YOLO's C2f
    blocks), and sets subnormal weights to zero (x86 computes with them tens of times slower):
    the pruned file has them, and the report times the file as given beside the rewritten original.

    ``input_shapes`` ({"images": (1, 3, 640, 640)}) fixes the inputs' dynamic dims for the
    analysis and the checks; ``inputs`` ({name: array}) gives example inputs where random data
    would not do (token ids, a sample rate). Without either, an image's dynamic height and width
    are analysed and timed at 224 (the widths are tuned for the shape the timings run at), other
    dynamic dims at 1, and where the graph needs a real size or onnxruntime cannot run it there,
    at a few image sizes in turn; a note names the shape used.

    ``budget={"macs": 0.5}`` / ``{"params": 0.6}`` replaces ``ratio`` with a target (a fraction
    <= 1 of the original or an absolute count), ``allocation="global"`` ranks channels across
    groups (see :func:`graphprune.prune`).

    ``round_to="auto"`` keeps channel counts at the multiples onnxruntime's CPU kernels run
    fastest on this machine (measured once and cached: graphprune/planning/measure.py); other
    widths can run slower than the original's and erase the savings. ``round_to=1`` allows any
    width; ``runtime=None`` neither aligns nor measures. The latency before and after (one
    thread, the example inputs) is in the report; a slower pruned model raises a PruneWarning.
    ``calib``: batches of inputs (dicts by input name, or tuples in input order) run in
    onnxruntime: channels are ranked from data and, unless ``compensate=False``, the layers
    that lose inputs are refit (their initializers change; the oracle checks the plan
    without compensation; ``add_bias=True`` lets it give a Conv, Gemm or MatMul without a
    bias one). With ``calib``, ``allocation="auto"`` spends the uniform plan's
    parameter budget where the measured output error is least (``"uniform"``: ``ratio``
    everywhere), and a ``budget`` removing at most 40% likewise when affordable (see
    :func:`graphprune.prune`).

    Example:
        >>> report = graphprune.prune_onnx("model.onnx", "slim.onnx", ratio=0.3)   # doctest: +SKIP
        >>> print(report)                                                         # doctest: +SKIP
    """
    if ratio is not None:
        given["ratio"] = ratio
    opts = PruneOptions.of(options, defaults=ONNX_DEFAULTS, **given)  # every option checked before the load
    dst = Path(dst)
    _check_paths(Path(src), dst)
    for name, shape in (input_shapes or {}).items():
        if isinstance(shape, (str, bytes)) or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool)
                                                      and d > 0 for d in shape):
            raise PlanError(f"input_shapes['{name}'] = {shape!r}: give a tuple of positive whole numbers, such as "
                            "(1, 3, 224, 224)")
    if inputs is not None and not isinstance(inputs, Mapping):
        raise PlanError(f"inputs= takes {{input name: array}}, not a {type(inputs).__name__}: name each array by "
                        "the model input it feeds")
    program = OnnxProgram.load(src, dict(inputs) if inputs is not None else None, input_shapes, fuse=opts.fuse)
    pruned, report = prune_program(program, opts, plan_)
    pruned.save(dst)
    report.path = str(dst)
    return report
