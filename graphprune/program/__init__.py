"""One model abstraction per framework (``base.Program``); the pipeline is written against it.

``torch_program.TorchProgram`` and ``onnx_program.OnnxProgram`` are imported from their own
modules: this package imports neither, so an ONNX user does not load the torch program's
imports, and the torch program's helpers (calib, backends) may import ``program.torch_run``.
"""
from .base import Program

__all__ = ["Program"]
