"""``copy.deepcopy`` of a model that also holds tensors computed from its parameters.

torch refuses to deepcopy a tensor that is not a graph leaf (it has a grad_fn): torchdyn's ODEProblem keeps
``self.vf_params = torch.cat([p.flatten() for p in vf.parameters()])``, and every copy the pipeline makes
(candidate plans timed, the oracle's float64 twin) raised torch's raw RuntimeError. Such a tensor is a value
computed once, at construction: the copy holds it detached.
"""
from __future__ import annotations

import copy
from typing import Any, TypeVar

import torch

M = TypeVar("M", bound=torch.nn.Module)


def _computed(value: Any, out: list[torch.Tensor], depth: int = 0) -> None:
    if isinstance(value, torch.Tensor):
        if value.grad_fn is not None:
            out.append(value)
    elif depth < 2 and isinstance(value, (list, tuple)):
        for v in value:
            _computed(v, out, depth + 1)
    elif depth < 2 and isinstance(value, dict):
        for v in value.values():
            _computed(v, out, depth + 1)


def model_copy(model: M) -> M:
    """A deep copy of ``model``; tensors it holds with a grad_fn (outside its parameters and buffers) detached."""
    found: list[torch.Tensor] = []
    for m in model.modules():
        for value in vars(m).values():  # plain and private attributes, and the _buffers dict (a registered one)
            _computed(value, found)
    memo = {id(t): t.detach().clone() for t in found}
    return copy.deepcopy(model, memo)
