"""ONNX shape inference at chosen input sizes, in a forked child, so that a crash in it is an error, not our end.

At a size the model cannot take (madmom's onset CNN with its dynamic frames at 1: a 7-tall convolution makes a
negative height), onnx's C++ Slice inference fails an assertion and aborts the process: exit 134, no message, no
``except`` reaches it. The child runs the inference on its copy-on-write view of the model and hands back the graph
without its initializers (inference adds types, it never changes weights); a child killed by a signal becomes a
:class:`TraceError`, which the analysis takes as "this size does not work" and tries the next.
"""
from __future__ import annotations

import faulthandler
import os
import signal

import onnx

from ..errors import TraceError


def infer_at_sizes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``onnx.shape_inference.infer_shapes(model, data_prop=True)``, or ``model`` as it is where inference raises;
    a crash raises TraceError. Without ``os.fork`` (Windows) it runs here."""
    if not hasattr(os, "fork"):
        return _infer(model)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: nothing but the inference, then out without Python's exit handlers
        code = 1
        try:
            os.close(read)
            faulthandler.disable()  # a crash is expected here, and said by the parent: no dump of this child
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # nor the assertion's own text
            out = onnx.shape_inference.infer_shapes(model, data_prop=True)
            del out.graph.initializer[:]
            with os.fdopen(write, "wb") as f:
                f.write(out.SerializeToString())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        sizes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in model.graph.input}
        raise TraceError(f"ONNX shape inference crashed ({name}) at the input sizes {sizes}: the model cannot take "
                         "them (a convolution or slice left with a size below 1); give the sizes it runs at "
                         "(input_shapes={'name': (...)}, --input-shape name:DIMS)")
    if os.WEXITSTATUS(status) != 0 or not data:  # inference raised: keep what we have, as _infer does
        return model
    inferred = onnx.ModelProto()
    inferred.ParseFromString(data)
    inferred.graph.initializer.extend(model.graph.initializer)
    return inferred


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # an op without inference: keep what we have and fill holes at run time
        return model
