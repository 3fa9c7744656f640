"""Tensors inside Python lists, made one tensor by recorded ops while a forward is recorded.

``rows, cols = zip(*ind); mask[rows, cols] = False`` (UDOP's patch mask) and ``torch.tensor([p[0], p[1]])`` build
an index or a tensor from a list of 0-d tensors. torch reads their values in C++ without dispatching an op,
so the recorder saw none, and the recording held the example's values as constants: a program that differed
from the model on every other input, found only by the oracle. Here each such list becomes ``torch.stack`` of
its elements, which the recorder records: the values flow through the program as they do through the model.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch.overrides import TorchFunctionMode


def _holds_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor) or isinstance(x, (list, tuple)) and any(_holds_tensor(e) for e in x)


def _stacked(x: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A nested list of tensors and numbers as one tensor, by ``torch.stack`` (recorded): what ``torch.tensor``
    of it gives, for the index and value lists seen in models (equal-shaped, one dtype kind)."""
    if isinstance(x, torch.Tensor):
        out = x
    elif isinstance(x, (list, tuple)):
        parts = [_stacked(e) for e in x]
        kinds = {p.dtype for p in parts}
        common = parts[0].dtype if len(kinds) == 1 else (
            torch.get_default_dtype() if any(p.is_floating_point() for p in parts) else torch.long)
        out = torch.stack([p.to(common) for p in parts]) if parts else torch.tensor([])
    else:
        out = torch.as_tensor(x)
    return out if dtype is None else out.to(dtype)


def _index(index: Any) -> Any:
    if isinstance(index, tuple):
        return tuple(_stacked(e) if isinstance(e, (list, tuple)) and _holds_tensor(e) else e for e in index)
    return _stacked(index) if isinstance(index, list) and _holds_tensor(index) else index


class _Stacking(TorchFunctionMode):
    """Indexes and written values that are lists holding tensors, stacked first (a function mode: torch's own
    ``Tensor.__getitem__`` stays as it is; replacing a dunder on the class changes its C slots for good)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.__getitem__ and len(args) == 2:
            args = (args[0], _index(args[1]))
        elif func is torch.Tensor.__setitem__ and len(args) == 3:
            value = args[2]
            args = (args[0], _index(args[1]),
                    _stacked(value) if isinstance(value, (list, tuple)) and _holds_tensor(value) else value)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def stacked_sequences() -> Iterator[None]:
    """Context: indexing with, writing, and ``torch.tensor`` / ``torch.as_tensor`` of lists that hold tensors go
    through ``torch.stack`` (see the module docstring)."""
    tensor, as_tensor = torch.tensor, torch.as_tensor

    def made(fn):
        def run(data, *args, **kwargs):
            if isinstance(data, (list, tuple)) and _holds_tensor(data):
                out = _stacked(data, kwargs.get("dtype", args[0] if args else None))
                device = kwargs.get("device")
                return out.to(device) if device is not None else out
            return fn(data, *args, **kwargs)
        return run

    torch.tensor, torch.as_tensor = made(tensor), made(as_tensor)
    try:
        with _Stacking():
            yield
    finally:
        torch.tensor, torch.as_tensor = tensor, as_tensor
