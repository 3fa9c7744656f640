"""The exactness oracle on a PyTorch model (see graphprune/oracle.py for what it proves)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .graph import DependencyGraph
from .oracle import OracleReport, run_oracle
from .oracle import max_abs_diff as _max_abs_diff
from .planner import PrunePlan, keep_masks
from .program.torch_program import TorchProgram

__all__ = ["OracleReport", "masked_original", "max_abs_diff", "verify"]


def masked_original(dg: DependencyGraph, plan: PrunePlan, args: tuple, kwargs: dict | None = None) -> Any:
    """Run the original exported program with the plan's channels zeroed everywhere."""
    return dg.program.run_raw((tuple(args), dict(kwargs or {})), masks=keep_masks(dg, plan))


def _arrays(x: Any) -> list[np.ndarray]:
    return [t.detach().double().cpu().numpy() for t in torch.utils._pytree.tree_leaves(x)
            if isinstance(t, torch.Tensor)]


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest difference between two model outputs (any nesting of tensors)."""
    return _max_abs_diff(_arrays(a), _arrays(b))


def verify(model: torch.nn.Module, args: tuple, plan: PrunePlan, graph: DependencyGraph | None = None,
           kwargs: dict | None = None, atol: float = 1e-5, trials: int = 2) -> OracleReport:
    """Hold a plan to the oracle without touching ``model``.

    A copy of the (unpruned) model is pruned with the plan's exact groups and
    compared with the masked original, on the example inputs and ``trials``
    random inputs of the same shapes; inexact pruned groups are listed, not
    silently passed.

    Example:
        >>> import torch, graphprune
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
        >>> x = (torch.randn(3, 4),)
        >>> g = graphprune.trace(m, x)
        >>> plan = graphprune.plan(g, m, ratio=0.5)
        >>> graphprune.verify(m, x, plan, g).passed
        True
    """
    args = args if isinstance(args, tuple) else (args,)
    program = TorchProgram.of(graph, model, args, kwargs) if graph is not None else TorchProgram(model, args, kwargs)
    return run_oracle(program, plan, atol, trials)
