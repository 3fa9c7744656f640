"""The batches recover() trains and scores on: how a batch becomes the forward's inputs, and the
held-out split with an endless stream of training batches (rules in api/recover.py's docstring)."""
from __future__ import annotations

import inspect
import itertools
from typing import Any, Callable, Mapping, Sequence

import torch

from ..errors import PlanError

HOW = ("give a DataLoader or a list of batches: tensors, tuples/lists of tensors (positional inputs; "
        "(inputs, labels) uses the inputs), or dicts of keyword inputs")


class RecoverError(PlanError):
    """The data, teacher or options given to :func:`recover` cannot be used."""


def positional_params(model: torch.nn.Module) -> int | None:
    """The forward's required positional parameters; None when it takes any number."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    required = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    return None if any(p.kind is p.VAR_POSITIONAL for p in params) else len(required)


def _tensor(x: Any) -> Any:
    return torch.from_numpy(x) if type(x).__module__ == "numpy" and hasattr(x, "shape") else x


def as_inputs(batch: Any, where: str, positional: int | None, unpack: Callable | None) -> tuple[tuple, dict]:
    """A batch as ``(args, kwargs)`` for the forward (the rule in the module docstring)."""
    if unpack is not None:
        args, kwargs = unpack(batch)
        args, kwargs = tuple(map(_tensor, args)), {k: _tensor(v) for k, v in dict(kwargs).items()}
    elif isinstance(batch, Mapping):
        if not all(isinstance(k, str) for k in batch):
            raise RecoverError(f"{where} is a dict whose keys are not input names ({list(batch)[:4]}); {HOW}")
        args, kwargs = (), {k: _tensor(v) for k, v in batch.items()}
    elif isinstance(batch, (tuple, list)):
        items = [_tensor(b) for b in batch]
        args, kwargs = tuple(items if positional is None or len(items) <= max(positional, 1) else items[:1]), {}
    else:
        args, kwargs = (_tensor(batch),), {}
    if not any(isinstance(v, torch.Tensor) for v in (*args, *kwargs.values())):
        raise RecoverError(f"{where} is a {type(batch).__name__} holding no tensor; {HOW}")
    return args, kwargs


def first_tensor(out: Any) -> torch.Tensor | None:
    """A module's output for feature and block matching: the tensor, or the first tensor inside it."""
    if isinstance(out, torch.Tensor):
        return out
    values = out.values() if isinstance(out, Mapping) else out if isinstance(out, (tuple, list)) else ()
    return next((t for t in map(first_tensor, values) if t is not None), None)


def to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(v, device) for v in x)
    if isinstance(x, Mapping):
        return {k: to_device(v, device) for k, v in x.items()}
    return x.to(device) if isinstance(x, torch.Tensor) else x


class Batches:
    """Held-out batches (cached) and an endless stream of training batches, epoch after epoch."""

    def __init__(self, data: Any, holdout: float, seed: int, cap: int):
        if data is None or isinstance(data, (str, bytes, torch.Tensor, Mapping)):
            what = "None" if data is None else f"one {type(data).__name__}"
            raise RecoverError(f"data is {what}, not an iterable of batches; {HOW} (one batch: [batch])")
        try:
            first = iter(data)
        except TypeError:
            raise RecoverError(f"data is a {type(data).__name__}, which cannot be iterated; {HOW}") from None
        sized = first is not data and hasattr(data, "__len__") and not isinstance(
            getattr(data, "dataset", None), torch.utils.data.IterableDataset)
        self.source = data if sized else list(itertools.islice(first, cap))  # read once: cached
        first = first if sized else iter(self.source)
        if not (n := len(self.source)):
            raise RecoverError(f"data holds no batches; {HOW}")
        self.n_hold = 0 if n < 2 or holdout <= 0 else min(n - 1, max(1, round(holdout * n)))
        self.heldout = list(itertools.islice(first, self.n_hold))
        self._first, self.n_train, self._gen = first, n - self.n_hold, torch.Generator().manual_seed(seed)
        self._started = False

    def train(self):
        """``(label, batch)`` forever; a list's batches in a new seeded order each epoch."""
        # the first call's first pass goes on after the held-out batches; a later call (recover's block
        # stage reads a pass first) starts a new pass, skipping them by position
        it, pos = (self._first, self.n_hold) if not self._started else (iter(self.source), 0)
        self._started = True
        while True:
            if isinstance(self.source, Sequence):
                order = (self.n_hold + i for i in torch.randperm(self.n_train, generator=self._gen).tolist())
                batches = ((k, self.source[k]) for k in order)
            else:
                batches = ((k, b) for k, b in enumerate(it, pos) if k >= self.n_hold)
            seen = 0
            for seen, (k, batch) in enumerate(batches, 1):
                yield f"batch {k}", batch
            if not seen:
                raise RecoverError(f"a pass over data gave no batch after the {self.n_hold} held-out one(s); {HOW}")
            it, pos = iter(self.source), 0
