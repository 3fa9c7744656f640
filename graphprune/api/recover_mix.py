"""Blended inputs for recover(): function matching (Beyer et al. 2022, "Knowledge distillation: A good
teacher is patient and consistent"). Teacher and student see the same convex blend of two items of a
batch, so a few hundred images give a new input every step and the target stays exact (the teacher's
output on that very input). Without it a small recovery set is learnt by heart: at half the MACs
EfficientNet-Lite0 stopped improving its held-out loss after 650 steps on 32 photos and 128 crops of
them (docs/runtime.md, tenth pass).
"""
from __future__ import annotations

from typing import Any

import torch

from .recover_data import RecoverError

AUTO_MIX = 1.0  # recover(mix=None)'s Beta(1, 1): blends of every proportion (docs/runtime.md, tenth pass)
# mix=None blends images, (N, C, H, W) or more dims, only: a 2-D or 3-D input may be (time, batch, ...)
# (nn.LSTM's default), where dim 0 is not the item; an explicit mix= blends any floating input of 2+ dims
AUTO_MIN_DIM = 4


def _blendable(key: str, x: Any, min_dim: int, n: int | None = None) -> bool:
    """A floating tensor of items (images, features), never a mask (a blended mask would not match its tokens)."""
    return (isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() >= min_dim and "mask" not in key
            and (n is None or x.shape[0] == n))


def mix_inputs(args: tuple, kwargs: dict, alpha: float, min_dim: int = 2) -> tuple[tuple, dict, int]:
    """``(args, kwargs, mixed)``: every blendable input of ``n >= 2`` items replaced by
    ``lam * x + (1 - lam) * x[perm]``, one ``lam ~ Beta(alpha, alpha)`` per item and one permutation for
    all inputs (so the inputs of an item stay consistent); ``mixed`` counts the tensors blended. Draws
    from torch's global generator, which recover() seeds."""
    keyed = [("", v) for v in args] + list(kwargs.items())
    n = next((v.shape[0] for k, v in keyed if _blendable(k, v, min_dim)), None)
    if n is None or n < 2:
        return args, kwargs, 0
    a = torch.tensor(float(alpha))
    lam, perm, mixed = torch.distributions.Beta(a, a).sample((n,)), torch.randperm(n), 0

    def blend(key, v):
        nonlocal mixed
        if not _blendable(key, v, min_dim, n):
            return v
        mixed += 1
        w = lam.to(v.device, v.dtype).view(n, *([1] * (v.dim() - 1)))
        return w * v + (1 - w) * v[perm.to(v.device)]

    return tuple(blend("", v) for v in args), {k: blend(k, v) for k, v in kwargs.items()}, mixed


def check_mix(args: tuple, kwargs: dict, mix: float | None, where: str) -> None:
    """An explicit ``mix=`` on inputs with nothing to blend is refused (the default then blends nothing)."""
    if mix and not any(_blendable(k, v, 2) for k, v in [("", v) for v in args] + list(kwargs.items())):
        raise RecoverError(f"mix={mix} blends floating inputs of two or more dims whose first dim is the item (images, "
                           f"features), and {where} has none (token ids and masks are never blended): drop mix=")


def blended(inputs: tuple[tuple, dict], mix: float | None, where: str) -> tuple[tuple, dict]:
    """The inputs as recover(mix=) feeds them to both models (0: as given)."""
    if mix == 0:
        return inputs
    check_mix(*inputs, mix, where)
    args, kwargs, _ = mix_inputs(*inputs, AUTO_MIX if mix is None else mix, AUTO_MIN_DIM if mix is None else 2)
    return args, kwargs
