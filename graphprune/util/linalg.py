"""Solves of a block of an inverse Hessian against the weights, which may be singular.

OBS takes a block of H^-1 for the columns it removes; after earlier removals' updates (float32, wide
layers) such a block can be singular to working precision. A whisper decoder's greedy ordering raised
torch's LinAlgError from the middle of a prune; least squares gives the minimum-norm answer there.
"""
from __future__ import annotations

import numpy as np
import torch


def solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a^-1 b``; least squares where ``a`` is singular."""
    x, info = torch.linalg.solve_ex(a, b)
    if int(info) == 0 and bool(torch.isfinite(x).all()):
        return x
    return torch.linalg.lstsq(a.double(), b.double(), driver="gelsd").solution.to(b.dtype)


def solve_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a^-1 b`` in numpy; least squares where ``a`` is singular."""
    try:
        x = np.linalg.solve(a, b)
        if np.isfinite(x).all():
            return x
    except np.linalg.LinAlgError:
        pass
    return np.linalg.lstsq(a, b, rcond=None)[0]
