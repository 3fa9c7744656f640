"""MACs and parameters of whatever a user holds: a PyTorch model with example inputs, an ONNX file or
model, a graph from graphprune.trace / load_onnx, or the IR itself (with a shape function, as the
planner counts candidate plans). The IR counters live in graphprune/metrics.py; these find the IR."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import torch

from .. import metrics
from ..errors import PlanError
from ..graph import DependencyGraph
from ..program.onnx_program import OnnxProgram
from .torch_models import trace


def _ir(model: Any, args: Any, kwargs: dict | None):
    if isinstance(model, DependencyGraph):
        return model.ir
    if hasattr(model, "nodes") and hasattr(model, "values"):  # the IR (graphprune.ir.Graph)
        return model
    if isinstance(model, onnx.ModelProto):  # the file as given: no fusing rewrite before counting
        return OnnxProgram(model).graph().ir
    if isinstance(model, (str, Path)):
        return OnnxProgram.load(str(model), fuse=False).graph().ir
    if isinstance(model, torch.nn.Module):
        if args is None and not kwargs:
            raise PlanError(f"counting a {type(model).__name__} traces it: pass its example inputs, "
                            "count_macs(model, (x,))")
        if isinstance(args, dict):  # keyword inputs (a transformers model's), as hf.example_inputs gives them
            args, kwargs = (), {**args, **(kwargs or {})}
        return trace(model, () if args is None else args if isinstance(args, tuple) else (args,), kwargs).ir
    raise PlanError(f"count_macs/count_params take a torch.nn.Module with example inputs, an ONNX path or "
                    f"ModelProto, or a graph from graphprune.trace; not {type(model).__name__}")


def count_macs(model: Any, args: Any = None, kwargs: dict | None = None, shape_of=None) -> int:
    """Multiply-accumulates of one forward at the example inputs (every recurrent step counted).

    Example:
        >>> import torch, graphprune
        >>> graphprune.count_macs(torch.nn.Linear(4, 8), (torch.randn(2, 4),))
        64
    """
    if callable(args) and not isinstance(args, torch.nn.Module) and shape_of is None:  # (ir, shape_fn): the planner's
        args, shape_of = None, args
    return metrics.count_macs(_ir(model, args, kwargs), shape_of)


def count_params(model: Any, args: Any = None, kwargs: dict | None = None, shape_of=None) -> int:
    """Parameters (weights and biases; buffers not) as the graph holds them; a module needs its example inputs."""
    if callable(args) and not isinstance(args, torch.nn.Module) and shape_of is None:
        args, shape_of = None, args
    return metrics.count_params(_ir(model, args, kwargs), shape_of)
