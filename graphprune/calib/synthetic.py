"""Calibration images distilled from a CNN's own BatchNorm statistics (``synthetic_images``).

Every BatchNorm layer stores the mean and variance its input had over the training set. Images whose
batch statistics match those at every layer look, to the network, like its training distribution
(ZeroQ's "distilled data", Cai et al. 2020; DeepInversion's feature prior, Yin et al. 2020): they
start as seeded Gaussian noise and Adam moves the pixels to lower the summed distance between each
layer's batch mean / standard deviation and its running ones. Optional terms: a cross-entropy to
seeded random target classes (DeepInversion's class-conditional term, for class-diverse images), a
total-variation and an l2 prior on the pixels. Like ``graphprune.hf.generated_batches`` for LLMs they
calibrate on the model's own distribution instead of a few photos, or with no data at all.
"""
from __future__ import annotations

import torch

from ..errors import PlanError
from ..util.progress import progress

# The public BatchNorm classes (their shared base class is private to torch).
_BATCHNORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)


def batchnorms(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The BatchNorm layers that keep running statistics (the targets the images are fitted to)."""
    return [m for m in model.modules() if isinstance(m, _BATCHNORMS)
            and m.track_running_stats and m.running_mean is not None and m.running_var is not None]


class _BNMatch:
    """Forward pre-hooks that add up, over the BatchNorm layers, ||batch mean - running mean||_2 +
    ||batch std - running std||_2 of each layer's input while they are installed."""

    def __init__(self, layers):
        self.loss, self.hooks = None, [m.register_forward_pre_hook(self._hook) for m in layers]

    def _hook(self, module, inputs):
        x = inputs[0]
        dims = [d for d in range(x.dim()) if d != 1]
        var, mean = torch.var_mean(x, dims, correction=0)
        term = torch.linalg.vector_norm(mean - module.running_mean) + torch.linalg.vector_norm(
            (var + module.eps).sqrt() - (module.running_var + module.eps).sqrt())
        self.loss = term if self.loss is None else self.loss + term

    def take(self) -> torch.Tensor:
        loss, self.loss = self.loss, None
        return loss

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


def _check(model, n, shape, steps, batch_size) -> list:
    for name, v in (("n", n), ("steps", steps), ("batch_size", batch_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "steps" else 1):
            raise PlanError(f"synthetic_images: {name} must be a whole number >= {0 if name == 'steps' else 1}, "
                            f"not {v!r}")
    if not shape or not all(isinstance(s, int) and s > 0 for s in shape):
        raise PlanError(f"synthetic_images: shape must be one image's shape without the batch, e.g. (3, 224, 224), "
                        f"not {shape!r}")
    layers = batchnorms(model)
    if not layers:
        raise PlanError(f"synthetic_images: {type(model).__name__} has no BatchNorm layer with running statistics "
                        "to distil images from (BatchNorm folded into the convolutions, or none at all): "
                        "calibrate on real data (calib=...) instead")
    return layers


@torch.no_grad()
def bn_statistics_loss(model: torch.nn.Module, x: torch.Tensor) -> float:
    """The summed BatchNorm statistics distance of the batch ``x`` (what ``synthetic_images`` lowers)."""
    layers = _check(model, 1, tuple(x.shape[1:]), 0, 1)
    match, was_training = _BNMatch(layers), model.training
    model.eval()
    try:
        model(x)
        return float(match.take())
    finally:
        match.remove()
        model.train(was_training)


def _tv(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between neighbouring pixels (images: the last two dimensions)."""
    return ((x[..., 1:, :] - x[..., :-1, :]) ** 2).mean() + ((x[..., :, 1:] - x[..., :, :-1]) ** 2).mean()


def _distil(model, match, x, targets, gen, steps, lr, class_weight, tv, l2, jitter, bounds, desc):
    """Adam on the pixels of one batch; each step a seeded random shift (up to ``jitter`` pixels) and
    flip, as DeepInversion does, so that no pixel pattern fits one alignment only."""
    x.requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    for _ in progress(range(steps), desc, steps):
        dy, dx = (torch.randint(-jitter, jitter + 1, (2,), generator=gen).tolist() if jitter else (0, 0))
        flip = bool(torch.randint(0, 2, (1,), generator=gen)) if jitter else False
        v = torch.roll(x, (dy, dx), (-2, -1))
        v = v.flip(-1) if flip else v
        out = model(v)
        loss = match.take()
        if class_weight:
            loss = loss + class_weight * torch.nn.functional.cross_entropy(out, targets)
        if tv:
            loss = loss + tv * _tv(x)
        if l2:
            loss = loss + l2 * (x ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if bounds is not None:
            with torch.no_grad():
                x.clamp_(*bounds)
    return x.detach()


def synthetic_images(model: torch.nn.Module, n: int, shape: tuple[int, ...], seed: int = 0, steps: int = 200,
                     batch_size: int = 16, lr: float = 0.1, class_weight: float = 0.0, tv: float = 0.0,
                     l2: float = 0.0, jitter: int = 0, bounds: tuple[float, float] | None = None
                     ) -> list[tuple[torch.Tensor]]:
    """``n`` images of ``shape`` (one image, e.g. ``(3, 224, 224)``, in the model's normalised input
    space) distilled from ``model``'s BatchNorm running statistics, as ``calib=`` batches of
    ``batch_size`` (each batch is optimised on its own: its statistics are the batch's).

    Seeded: the same model, arguments and seed give the same images (on one device and torch build).
    ``class_weight`` > 0 adds a cross-entropy to seeded random classes of the model's output (a
    classifier's logits); ``tv`` / ``l2`` weigh smoothness and size priors on the pixels; ``jitter``
    shifts and flips each step's view by up to that many pixels; ``bounds`` clamps the pixels (the
    normalised range of real images). The model's weights are left as they were.

    Example:
        >>> calib = photo_batches + graphprune.calib.synthetic_images(model, 64, (3, 224, 224))  # doctest: +SKIP
    """
    layers = _check(model, n, tuple(shape), steps, batch_size)
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    was_training, grads = model.training, [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)  # gradients for the pixels only: no weight gradients computed
    match, out = _BNMatch(layers), []
    try:
        for first in range(0, n, batch_size):
            rows = min(batch_size, n - first)
            x = torch.randn((rows, *shape), generator=gen).to(device)
            targets = None
            if class_weight:
                with torch.no_grad():
                    classes = model(x[:1]).shape[-1]
                match.take()
                targets = torch.randint(0, classes, (rows,), generator=gen).to(device)
            desc = f"distilling calibration images ({first + rows}/{n})"
            out.append((_distil(model, match, x, targets, gen, steps, lr, class_weight, tv, l2, jitter, bounds,
                                desc),))
    finally:
        match.remove()
        for p, g in zip(model.parameters(), grads):
            p.requires_grad_(g)
        model.train(was_training)
    return out
