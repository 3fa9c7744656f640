"""Which input shapes an ONNX model without given ones is analysed, checked and timed at.

Dynamic dims need a size. An image's height and width go to a common image size (224 first): at
1x1 the widths would be tuned, and the speedup timed, for a one-pixel image. A graph that only
analyses at some size (a head flattening to a fixed width) is tried at sizes from the smallest,
then at a common image size where that one runs alike (a detector's heads at 1x1 concat maps that
its strides round apart, and at 32x32 the timings mean as little), and a size onnxruntime cannot
run (PP-OCRv6's detector at 1x1) is passed over.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import onnx

from ..errors import TraceError
from ..frontends.onnx_lower import input_dims, lower, probe_inputs
from ..frontends.onnx_weight_dims import weight_dims
from .onnx_batches import ort_text

IMAGE_SIZES = (32, 64, 128, 224, 320, 640)  # dynamic dims past the batch, tried when 1 does not analyse
IMAGE_FIRST = (224, 320, 640, 128, 64, 32)  # an image's dynamic height and width, in the order tried
TEXT_LENGTH = 128  # a token sequence's dynamic length: a sentence or a short passage (the CLI's --seq-len default)
_INTS = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)


def _declared(vi: onnx.ValueInfoProto) -> list[int | str | None]:
    """Each dim of ``vi``: its size, its dim_param, or None."""
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
            for d in vi.type.tensor_type.shape.dim]


def _inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits and vi.type.HasField("tensor_type")]


def image_inputs(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Inputs that are images, with the positions of their dynamic height and width: rank 4, float,
    1, 3 or 4 channels declared (dim 1, or dim 3 channels-last), and no dynamic spatial dim named
    like a dim of another input (an attention mask (N, 1, S, S) shares S with its token ids)."""
    out = {}
    others = {name for vi in _inputs(model) for name in _declared(vi) if isinstance(name, str)
              and len(_declared(vi)) != 4}
    for vi in _inputs(model):
        dims = _declared(vi)
        if len(dims) != 4 or vi.type.tensor_type.elem_type not in _FLOATS:
            continue
        for c, spatial in ((1, (2, 3)), (3, (1, 2))):
            dynamic = [k for k in spatial if not isinstance(dims[k], int)]
            if dims[c] in (1, 3, 4) and dynamic and not any(dims[k] in others for k in dynamic):
                out[vi.name] = dynamic
                break
    return out


def token_dims(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Inputs' dims that are a token sequence's length: dim 1 of an integer (batch, length) input
    when dynamic (token ids, their mask and type ids), and every dim another input names the same
    (an additive mask (N, 1, S, S) shares S with the ids)."""
    out, names = {}, set()
    for vi in _inputs(model):
        dims = _declared(vi)
        if len(dims) == 2 and vi.type.tensor_type.elem_type in _INTS and not isinstance(dims[1], int):
            out[vi.name] = [1]
            names |= {dims[1]} - {None}
    for vi in _inputs(model):
        shared = [k for k, d in enumerate(_declared(vi)) if k > 0 and isinstance(d, str) and d in names]
        if shared and vi.name not in out:
            out[vi.name] = shared
    return out


def _sized_dims(model: onnx.ModelProto, where: dict[str, list[int]], size: int,
                base: dict[str, list[int]] | None = None) -> dict[str, list[int]]:
    """Every input's dims with its dynamic dims at 1 (or as in ``base``), the ``where`` ones at ``size``,
    and so every dim named like one of those: inputs that share a dim_param share its size (DeepFilterNet's
    encoder reads feat_erb (1, 1, S, 32) and feat_spec (1, 2, S, 96); S at 224 in one and 1 in the other
    ran only by broadcasting, and its MACs and latency were of an input it never sees)."""
    dims = {name: list(d) for name, d in (base or input_dims(model, None, 1)).items()}
    named = {}
    for vi in _inputs(model):
        for k in where.get(vi.name, ()):
            dims[vi.name][k] = size
            declared = _declared(vi)[k]
            if isinstance(declared, str):
                named[declared] = size
    for vi in _inputs(model):
        for k, declared in enumerate(_declared(vi)):
            if isinstance(declared, str) and declared in named and vi.name in dims:
                dims[vi.name][k] = named[declared]
    return dims


def dynamic_dims(model: onnx.ModelProto) -> list[tuple[int, int | None]]:
    """(position, declared size or None) of every dim of every graph input."""
    return [(k, d if isinstance(d, int) else None) for vi in _inputs(model) for k, d in enumerate(_declared(vi))]


def spell(dims: list[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def spell_dims(dims: Mapping[str, Iterable[int]]) -> str:
    return ", ".join(f"{name} {'x'.join(str(d) for d in shape)}" for name, shape in dims.items())


@dataclass
class Tries:
    """The input dims to analyse at, in order, and how they were chosen: ``given`` (the user's
    shapes, or nothing dynamic), ``ones`` (dynamic dims at 1 first, timed at 2, then sizes),
    ``image`` (an image at common sizes first, then 1), ``text`` (token sequences at
    :data:`TEXT_LENGTH` first, then as ``ones``) or ``sized`` (a graph built for one size:
    sizes from the smallest; ``first_error`` says why 1 did not do)."""

    dims: list[dict[str, list[int]]]
    mode: str
    first_error: tuple[dict[str, list[int]], str] | None = None
    common: dict[str, list[int]] | None = None  # "sized": the common image size taken after the smallest that works

    def timed_apart(self, k: int) -> bool:  # the timings run at other dims than try k's analysis
        return self.mode == "ones" and k == 0

    def sized(self, k: int) -> bool:  # the analysis dims are chosen sizes, the timings run there too
        return self.mode in ("image", "sized", "text") or k > 0

    def note(self, model: onnx.ModelProto, k: int, errors: list) -> str:
        """The report's note on the shapes try ``k`` analyses at, where graphprune chose them: a chosen
        size, or dynamic dims past the batch left at 1 (a recording's length: MACs and latency are then
        those of one time step, which says nothing of the model as deployed). '' where the user gave them."""
        dims = self.common or self.dims[k]
        if self.common is not None:
            why = (f"a common image size where it runs as at {spell_dims(self.dims[k])}, the smallest that works "
                   f"(at {spell_dims(errors[-1][0])}: {errors[-1][1][:240]})")
        elif self.sized(k):
            why = ({"image": "a common image size for the dynamic dims",
                    "text": f"a common text length ({TEXT_LENGTH} tokens) for the dynamic dims"}[self.mode]
                   if self.mode in ("image", "text") and k == 0 else
                   f"the first size that works (at {spell_dims(errors[-1][0])}: {errors[-1][1][:240]})")
        elif self.mode == "ones":
            at_one = [f"{vi.name} dim {j}" + (f" ('{d}')" if d else "")
                      for vi in _inputs(model) for j, d in enumerate(_declared(vi)) if j > 0 and not isinstance(d, int)]
            why = (f"its dynamic dims past the batch at 1 ({', '.join(at_one[:3])}), so MACs and latency are those "
                   "of that size")
        else:
            return ""
        given = ", ".join(f"'{name}': {tuple(shape)}" for name, shape in dims.items())
        flags = " ".join(f"--input-shape {name}:{'x'.join(map(str, shape))}" for name, shape in dims.items())
        return (f"input shapes: analysed and timed at {spell_dims(dims)}, {why}; widths are tuned for that shape: give "
                f"the one you deploy at (input_shapes={{{given}}}, {flags}, your sizes)")


def analysis_tries(model: onnx.ModelProto, shapes) -> Tries:
    """Where to analyse a model without given shapes. An image whose graph analyses at 1x1 is
    size-agnostic: its height and width go to :data:`IMAGE_FIRST` (other inputs' dynamic dims stay
    at 1); token ids' length goes to :data:`TEXT_LENGTH`. An image that does not was built for some
    size (a head flattening to a fixed width), found by trying :data:`IMAGE_SIZES` from the smallest,
    as other dynamic dims are."""
    graph = model
    fixed = {} if shapes else weight_dims(model)
    if fixed:  # a dynamic dim only one size fits (the features a first layer's weight reads): as if declared
        model = _declaring(model, fixed)
    first = input_dims(model, shapes)
    # where the first dim is not a batch (a recording's frames, (T, F)) and nothing runs at 1 there: it too at sizes
    leading = [input_dims(model, None, size, size) for size in IMAGE_SIZES] if not shapes and any(
        k == 0 and d is None for k, d in dynamic_dims(model)) else []
    if shapes or not any(k > 0 and d is None for k, d in dynamic_dims(model)):
        return Tries([first, *leading], "given")
    sized = [input_dims(model, None, 1, size) for size in IMAGE_SIZES]
    images = image_inputs(model)
    if images:
        try:
            lower(graph, first, None)
        except TraceError as exc:
            return Tries(sized, "sized", (first, str(exc)))
        return Tries([_sized_dims(model, images, size) for size in IMAGE_FIRST] + [first], "image")
    tokens = token_dims(model)
    if tokens:  # at one token attention and the widths' timings would be those of a one-word text
        return Tries([_sized_dims(model, tokens, TEXT_LENGTH), first, *sized], "text")
    return Tries([first, *sized, *leading], "ones")


def _declaring(model: onnx.ModelProto, fixed: dict[str, dict[int, int]]) -> onnx.ModelProto:
    """``model``'s inputs, declaring the ``fixed`` dims, for the functions above that read only inputs (and which of
    them are initializers: named, not copied)."""
    out = onnx.ModelProto()
    out.graph.input.extend(model.graph.input)
    out.graph.output.extend(model.graph.output)
    out.graph.initializer.extend(onnx.TensorProto(name=t.name) for t in model.graph.initializer)
    for vi in out.graph.input:
        for k, size in fixed.get(vi.name, {}).items():
            vi.type.tensor_type.shape.dim[k].Clear()
            vi.type.tensor_type.shape.dim[k].dim_value = size
    return out


def _shapes(sess, model: onnx.ModelProto, dims) -> list[tuple] | None:
    """The outputs' shapes onnxruntime gives at ``dims`` (random inputs), or None where it cannot run."""
    import onnxruntime as ort

    quiet = ort.RunOptions()
    quiet.log_severity_level = 4
    try:
        return [np.shape(o) for o in sess.run(None, probe_inputs(model, dims=dims), quiet)]
    except Exception:  # noqa: BLE001 - onnxruntime's own types: that size does not run
        return None


def common_size(sess, model: onnx.ModelProto, smallest: dict[str, list[int]]) -> dict[str, list[int]] | None:
    """In ``sized`` mode, the first of :data:`IMAGE_FIRST` above the ``smallest`` size that works at which
    the images' outputs keep their rank and every leading dim that was the batch's 1, else None. A head
    that flattens to a fixed width would run at a larger size by regrouping its batch (an output (49, 10)
    where it gave (1, 10)); a detector's outputs keep (1, ...) and grow past the batch."""
    images = image_inputs(model)
    size = max((smallest[name][k] for name, ks in images.items() for k in ks), default=None)
    base = _shapes(sess, model, smallest) if size else None
    for candidate in (c for c in IMAGE_FIRST if base and c > size):
        dims = _sized_dims(model, images, candidate, smallest)
        got = _shapes(sess, model, dims)
        if got and all(len(g) == len(b) and (not b or b[0] != 1 or g[0] == 1) for g, b in zip(got, base)) \
                and _misdeclared(model, got) is None:  # and as the outputs are declared
            return dims
    return None


def _misdeclared(model: onnx.ModelProto, shapes: list[tuple]) -> str | None:
    """Why outputs of ``shapes`` are not the graph's declared ones, or None. More dims than declared is the
    exporter's slip (ddddocr's CRNN declares (1, seqlen) for its (T, 1, classes)), not a size that regroups
    the batch: it refused every size. Fewer is kept a refusal: a Squeeze without axes drops the dims a size
    of 1 makes 1."""
    declared = [[d if isinstance(d, int) else None for d in _declared(o)] for o in model.graph.output]
    for shape, want in zip(shapes, declared):
        if want and (len(shape) < len(want) or len(shape) == len(want) and any(
                w not in (None, g) for w, g in zip(want, shape))):
            return f"an output comes out {tuple(shape)} where the graph declares {spell(want)}"
    return None


def runtime_refusal(sess, model: onnx.ModelProto, dims, timed_apart: bool) -> str | None:
    """Why onnxruntime (``sess``) cannot run the model at the analysis ``dims`` (and, where the
    timings run at other dims, ``timed_apart``, at those), or None. A detector's dim_params may
    promise equal sizes that a 1x1 image breaks (PP-OCRv6 det: "Shape mismatch attempting to
    re-use buffer"); a head that flattens to a fixed width runs at other sizes by regrouping
    the batch, which the outputs' declared dims show."""
    import onnxruntime as ort

    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # the refusal is reported in the note, not logged in red
    runs = [(probe_inputs(model, dims=dims), True)] + ([(probe_inputs(model), False)] if timed_apart else [])
    for feeds, analysed in runs:
        try:
            outs = sess.run(None, feeds, quiet)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own types
            where = "" if analysed else f" at the timing shape {spell_dims({k: v.shape for k, v in feeds.items()})}"
            return f"onnxruntime cannot run it{where}: {ort_text(exc, 200)}"
        misfit = _misdeclared(model, [np.shape(o) for o in outs]) if analysed else None  # a timing batch of 2 may differ
        if misfit:
            return misfit
    return None
