"""Mixed inputs for recover(): function matching (Beyer et al. 2022, "Knowledge distillation: A good
teacher is patient and consistent"). Teacher and student see the same convex mix of two items of a
batch, so a few hundred images give a new input every step and the target stays exact (the teacher's
output on that very input). Without it a small recovery set is learnt by heart: at half the MACs
EfficientNet-Lite0 stopped improving its held-out loss after 450 steps on 160 images.
"""
from __future__ import annotations

from typing import Any

import torch

AUTO_MIX = 1.0  # recover(mix=None)'s Beta(1, 1): blends of every proportion (docs/runtime.md, recovery)


def mixable(x: Any, n: int | None) -> bool:
    """A floating tensor of items (images, features, embeddings): what mixing blends."""
    return (isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() >= 2
            and (n is None or x.shape[0] == n))


def mix_inputs(args: tuple, kwargs: dict, alpha: float) -> tuple[tuple, dict, int]:
    """``(args, kwargs, mixed)``: every floating input of ``n >= 2`` items replaced by
    ``lam * x + (1 - lam) * x[perm]``, one ``lam ~ Beta(alpha, alpha)`` per item and one permutation for
    all inputs (so the inputs of an item stay consistent); ``mixed`` counts the tensors blended. Draws
    from torch's global generator, which recover() seeds."""
    values = [*args, *kwargs.values()]
    n = next((v.shape[0] for v in values if mixable(v, None)), None)
    if n is None or n < 2:
        return args, kwargs, 0
    a = torch.tensor(float(alpha))
    lam = torch.distributions.Beta(a, a).sample((n,))
    perm = torch.randperm(n)
    mixed = 0

    def blend(v):
        nonlocal mixed
        if not mixable(v, n):
            return v
        mixed += 1
        w = lam.to(v.device, v.dtype).view(n, *([1] * (v.dim() - 1)))
        return w * v + (1 - w) * v[perm.to(v.device)]

    return tuple(blend(v) for v in args), {k: blend(v) for k, v in kwargs.items()}, mixed
