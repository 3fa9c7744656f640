"""The oracle's inputs for a torch program: the example, and random inputs of its shapes and dtypes.

One example can hide a wrong rewrite behind a dead ReLU or a tiny activation, so the oracle runs
random inputs too: floats at the example's scale, integers (token ids, masks) within their
observed range. Integers can also steer the forward, though: SigLIP2's patch grid sizes pick how
its position embeddings are resized, PaliGemma's image tokens say where image features go. The
masked original runs the trace, which holds the example's path only, so a draw on which the trace
does not compute what the model computes (or which the model refuses) keeps the example's integers:
otherwise the oracle compares a path the pruned model never takes and says FAIL for a right model.
"""
from __future__ import annotations

from typing import Any

import torch

from ..errors import TraceError

_INTS = (torch.int64, torch.int32)


def oracle_batches(program, trials: int) -> list[tuple[tuple, dict]]:
    """The example inputs, then ``trials`` random ones (see the module docstring)."""
    example = (program.args, dict(program.kwargs))
    out = [example]
    gen = torch.Generator().manual_seed(1234)

    def fresh(a: Any) -> Any:
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            scale = float(a.float().std()) if a.numel() > 1 else 1.0
            return (torch.randn(a.shape, generator=gen) * (scale or 1.0)).to(a.dtype)
        if isinstance(a, torch.Tensor) and a.dtype in _INTS and a.numel():
            return torch.randint(int(a.min()), int(a.max()) + 1, a.shape, generator=gen).to(a.dtype)
        return a

    def ints_of(batch: tuple[tuple, dict], given: tuple[tuple, dict]) -> tuple[tuple, dict]:
        keep = lambda a, g: g if isinstance(g, torch.Tensor) and g.dtype in _INTS else a  # noqa: E731
        return (tuple(map(keep, batch[0], given[0])), {k: keep(v, given[1][k]) for k, v in batch[1].items()})

    has_ints = any(isinstance(a, torch.Tensor) and a.dtype in _INTS and a.numel()
                   for a in (*program.args, *program.kwargs.values()))
    for _ in range(trials):
        batch = (tuple(fresh(a) for a in program.args), {k: fresh(v) for k, v in program.kwargs.items()})
        if has_ints and not _trace_holds(program, batch):
            batch = ints_of(batch, example)
        out.append(batch)
    return out


def _trace_holds(program, batch: tuple[tuple, dict]) -> bool:
    """Whether the trace computes on ``batch`` what the model does, unmasked."""
    try:
        return program.trace_gap(batch) <= 1e-4
    except (RuntimeError, ValueError, IndexError, TypeError, TraceError):  # the model refuses the draw
        return False
