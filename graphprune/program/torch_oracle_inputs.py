"""The oracle's inputs for a torch program: the example, and random inputs of its shapes and dtypes.

One example can hide a wrong rewrite behind a dead ReLU or a tiny activation, so the oracle runs
random inputs too: floats at the example's scale, integers (token ids, masks; floats holding whole numbers) within their
observed range. Integers can also steer the forward, though: SigLIP2's patch grid sizes pick how
its position embeddings are resized, PaliGemma's image tokens say where image features go. The
masked original runs the trace, which holds the example's path only, so a draw on which the trace
does not compute what the model computes (or which the model refuses) keeps the example's integers:
otherwise the oracle compares a path the pruned model never takes and says FAIL for a right model.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from ..errors import TraceError
from ..util.compare import gaps
from ..util.model_copy import model_copy
from ..util.torch_compat import kept_attributes, tree_leaves, tree_map

_INTS = (torch.int64, torch.int32)


def oracle_batches(program, trials: int) -> list[tuple[tuple, dict]]:
    """The example inputs, then ``trials`` random ones (see the module docstring)."""
    example = (program.args, dict(program.kwargs))
    out = [example]
    gen = torch.Generator().manual_seed(1234)

    def fresh(a: Any) -> Any:
        if _integral(a):
            return torch.randint(int(a.min()), int(a.max()) + 1, a.shape, generator=gen).to(a.dtype)
        if isinstance(a, torch.Tensor) and a.is_floating_point() and a.numel() and bool(torch.isfinite(a).all()) \
                and float(a.min()) > 0:  # a noise level, a time, a scale: Gaussian draws made k-diffusion's log(sigma) NaN
            low, high = float(a.min()), float(a.max())
            low, high = (low, high) if low < high else (0.5 * low, 1.5 * low)
            return (low + (high - low) * torch.rand(a.shape, generator=gen)).to(a.dtype)
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            scale = float(a.float().std()) if a.numel() > 1 else 1.0
            return (torch.randn(a.shape, generator=gen) * (scale or 1.0)).to(a.dtype)
        return a

    def ints_of(batch: tuple[tuple, dict], given: tuple[tuple, dict]) -> tuple[tuple, dict]:
        keep = lambda a, g: g if _integral(g) else a  # noqa: E731
        return (tuple(map(keep, batch[0], given[0])), {k: keep(v, given[1][k]) for k, v in batch[1].items()})

    has_ints = any(_integral(a) for a in (*program.args, *program.kwargs.values()))
    for _ in range(trials):
        batch = (tuple(fresh(a) for a in program.args), {k: fresh(v) for k, v in program.kwargs.items()})
        if has_ints and not _trace_holds(program, batch):
            batch = ints_of(batch, example)
        out.append(batch)
    return out


def _integral(a: Any) -> bool:
    """Integers, or floats holding whole numbers only (gluonts' WaveNet passes its bin indices as floats and casts
    them for an embedding: Gaussian draws made negative indices, and the oracle failed a right model)."""
    if not isinstance(a, torch.Tensor) or not a.numel():
        return False
    if a.dtype in _INTS:
        return True
    if not a.is_floating_point() or a.numel() < 2 or not bool(torch.isfinite(a).all()):  # an additive mask's -inf
        return False
    low, high = float(a.min()), float(a.max())
    return low != high and max(-low, high) <= 2 ** 24 and bool(torch.equal(a, a.round()))


def _trace_holds(program, batch: tuple[tuple, dict]) -> bool:
    """Whether the trace computes on ``batch`` what the model does, unmasked."""
    try:
        return program.trace_gap(batch) <= 1e-4
    except (RuntimeError, ValueError, IndexError, TypeError, TraceError):  # the model refuses the draw
        return False


NOISE_PARAMS = 200_000_000  # a float64 twin of a larger model costs more memory than the check is worth


def float_noise(program, batch) -> float | None:
    """The model's own float32 rounding at ``batch``: its outputs against a float64 twin's, relative to their
    magnitude as the oracle measures its gap; None where the model is not all float32 or is too large. A model
    whose outputs are small differences of large activations (SKNet-50's random logits of ~358) rounds more than
    the oracle's atol by itself, and a right plan was refused with a FAIL at 1.3e-5."""
    params = list(program.model.parameters())
    if not params or any(p.dtype != torch.float32 for p in params) or sum(p.numel() for p in params) > NOISE_PARAMS:
        return None
    wide = lambda t: t.double() if isinstance(t, torch.Tensor) and t.dtype == torch.float32 else t  # noqa: E731
    args, kwargs = batch
    twin = model_copy(program.model).double()
    with torch.no_grad(), kept_attributes(program.model):
        got = program.model(*args, **kwargs)
        ref = twin(*tree_map(wide, tuple(args)), **tree_map(wide, dict(kwargs)))
    leaves = lambda out: [np.asarray(t.detach().double().cpu()) for t in tree_leaves(out)  # noqa: E731
                          if isinstance(t, torch.Tensor) and t.is_floating_point()]
    return gaps(leaves(got), leaves(ref))[1]


@contextmanager
def seeded(seed: int, model: torch.nn.Module):
    """Torch's random generators at ``seed`` for one run, as they were after it: a forward that samples (VITS's
    noise) draws alike in the pruned model and the masked original wherever it draws at the same shapes. Only
    the GPUs the model is on are touched (forking every visible one would open a context on each)."""
    gpus = sorted({t.device.index or 0 for t in (*model.parameters(), *model.buffers()) if t.device.type == "cuda"})
    with torch.random.fork_rng(devices=gpus):
        torch.manual_seed(seed)
        yield


def draws_random(program, batch) -> bool:
    """Whether the model samples at ``batch``: runs at two seeds differ, and by more than two runs at one seed do
    (kernels whose order of additions varies, a GPU's scatter, differ a little without any draw)."""
    outs = []
    for seed in (1, 1, 2):
        with seeded(seed, program.model), torch.no_grad(), kept_attributes(program.model):
            out = program.model(*batch[0], **batch[1])
        outs.append([np.asarray(t.detach().double().cpu()) for t in tree_leaves(out) if isinstance(t, torch.Tensor)])
    same, other = gaps(outs[0], outs[1])[0], gaps(outs[0], outs[2])[0]
    return other > 0 and other > 10 * same
