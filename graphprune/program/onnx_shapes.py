"""Which input shapes an ONNX model without given ones is analysed, checked and timed at.

Dynamic dims need a size. An image's height and width go to a common image size (224 first): at
1x1 the widths would be tuned, and the speedup timed, for a one-pixel image. A graph that only
analyses at some size (a head flattening to a fixed width) is tried at sizes from the smallest,
and a size onnxruntime cannot run (PP-OCRv6's detector at 1x1) is passed over.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import onnx

from ..errors import TraceError
from ..frontends.onnx_lower import input_dims, lower, probe_inputs

IMAGE_SIZES = (32, 64, 128, 224, 320, 640)  # dynamic dims past the batch, tried when 1 does not analyse
IMAGE_FIRST = (224, 320, 640, 128, 64, 32)  # an image's dynamic height and width, in the order tried
_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)


def _has_image_input(model: onnx.ModelProto) -> bool:
    """A rank-4 float input with its channels declared (dim 1, or dim 3 channels-last) and a
    dynamic height or width: analysing it at 1x1 would tune widths and time a 1-pixel image."""
    inits = {i.name for i in model.graph.initializer}
    for vi in model.graph.input:
        t = vi.type.tensor_type
        if vi.name in inits or not vi.type.HasField("tensor_type") or t.elem_type not in _FLOATS:
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim]
        if len(dims) == 4 and any(dims[c] is not None and None in dims[1:4] for c in (1, 3)):
            return True
    return False


def dynamic_dims(model: onnx.ModelProto) -> list[tuple[int, int | None]]:
    """(position, declared size or None) of every dim of every graph input."""
    inits = {i.name for i in model.graph.initializer}
    return [(k, d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None)
            for vi in model.graph.input if vi.name not in inits and vi.type.HasField("tensor_type")
            for k, d in enumerate(vi.type.tensor_type.shape.dim)]


def spell(dims: list[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def spell_dims(dims: Mapping[str, Iterable[int]]) -> str:
    return ", ".join(f"{name} {'x'.join(str(d) for d in shape)}" for name, shape in dims.items())


def analysis_tries(model: onnx.ModelProto, shapes) -> tuple[list[dict[str, list[int]]], bool]:
    """The input dims to analyse at, in order, and whether the first is a guessed image size.
    An image whose graph analyses at 1x1 is size-agnostic: it goes to :data:`IMAGE_FIRST`. One
    that does not was built for some size (a head flattening to a fixed width), found by trying
    :data:`IMAGE_SIZES` from the smallest, as other dynamic dims are."""
    first = input_dims(model, shapes)
    if shapes or not any(k > 0 and d is None for k, d in dynamic_dims(model)):
        return [first], False
    sized = [input_dims(model, None, 1, size) for size in IMAGE_SIZES]
    if _has_image_input(model):
        try:
            lower(model, first, None)
        except TraceError:
            return sized, False
        return [sized[IMAGE_SIZES.index(s)] for s in IMAGE_FIRST] + [first], True
    return [first, *sized], False


def runtime_refusal(sess, model: onnx.ModelProto, dims, timed_apart: bool) -> str | None:
    """Why onnxruntime (``sess``) cannot run the model at the analysis ``dims`` (and, where the
    timings run at other dims, ``timed_apart``, at those), or None. A detector's dim_params may
    promise equal sizes that a 1x1 image breaks (PP-OCRv6 det: "Shape mismatch attempting to
    re-use buffer"); a head that flattens to a fixed width runs at other sizes by regrouping
    the batch, which the outputs' declared dims show."""
    import onnxruntime as ort

    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # the refusal is reported in the note, not logged in red
    declared = [[d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                 for d in o.type.tensor_type.shape.dim] for o in model.graph.output]
    for feeds in [probe_inputs(model, dims=dims)] + ([probe_inputs(model)] if timed_apart else []):
        try:
            outs = sess.run(None, feeds, quiet)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own types
            return f"onnxruntime cannot run it: {str(exc).splitlines()[0]}"
        for out, want in zip(outs, declared):
            if want and (np.ndim(out) != len(want) or any(w not in (None, g) for w, g in zip(want, np.shape(out)))):
                return f"an output comes out {tuple(np.shape(out))} where the graph declares {spell(want)}"
    return None
