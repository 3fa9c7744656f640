"""One model abstraction per framework (see base.py); the pipeline is written against it."""
from .base import Program

__all__ = ["Program", "TorchProgram", "OnnxProgram"]


def __getattr__(name: str):
    # Lazy: an ONNX user need not pay for the torch program's imports, nor the reverse.
    if name == "TorchProgram":
        from .torch_program import TorchProgram

        return TorchProgram
    if name == "OnnxProgram":
        from .onnx_program import OnnxProgram

        return OnnxProgram
    raise AttributeError(name)
