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


def _leaves(x: Any) -> list:
    return [y for e in x for y in _leaves(e)] if isinstance(x, (list, tuple)) else [x]


def _common(leaves: list) -> tuple[torch.dtype, torch.device | None]:
    """The dtype ``torch.tensor`` gives a list of these (tensors' dtypes promoted, Python numbers counted by kind
    only) and the device of its tensors."""
    tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
    dtype = tensors[0].dtype if tensors else None
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    numbers = [type(v) for v in leaves if not isinstance(v, torch.Tensor)]
    if float in numbers and (dtype is None or not (dtype.is_floating_point or dtype.is_complex)):
        dtype = torch.get_default_dtype()
    elif int in numbers and (dtype is None or dtype == torch.bool):
        dtype = torch.long
    elif dtype is None:
        dtype = torch.bool
    return dtype, tensors[0].device if tensors else None


def _stacked(x: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A nested list of tensors and numbers as one tensor, by ``torch.stack`` (recorded): what ``torch.tensor``
    of it gives (a one-element tensor counts as its number; dtypes promoted; numbers on the tensors' device)."""
    common, device = _common(_leaves(x))

    def build(e: Any) -> torch.Tensor:
        if isinstance(e, (list, tuple)):
            return torch.stack([build(p) for p in e]) if e else torch.empty(0, dtype=common, device=device)
        if isinstance(e, torch.Tensor):
            return (e.reshape(()) if e.numel() == 1 else e).to(common)
        return torch.as_tensor(e, dtype=common, device=device)

    out = build(x)
    return out if dtype is None else out.to(dtype)


def _index(index: Any) -> Any:
    # torch reads a short list that holds a tensor, a list, a slice, None or ... as a tuple of indices
    # (x[[rows, cols]] is x[rows, cols]); a longer one, or one of numbers only, as one index tensor
    if isinstance(index, list) and len(index) < 32 and any(
            isinstance(e, (torch.Tensor, list, tuple, slice)) or e is None or e is Ellipsis for e in index):
        index = tuple(index)
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
