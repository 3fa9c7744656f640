"""Every module's attributes, parameters and buffers, kept so that a rewrite that does not hold can be undone."""
from __future__ import annotations

from torch import nn

from ..util.torch_compat import own_buffers, own_params, restore_tensors
from .torch_holders import hidden_modules


def snapshot(model: nn.Module) -> list[tuple[nn.Module, dict, dict, dict]]:
    """Every module's attributes, parameters and buffers (references: apply_plan replaces
    tensors and never writes into one), so a rewrite that does not hold can be undone."""
    return [(m, dict(vars(m)), dict(own_params(m)), dict(own_buffers(m)))
            for m in [*model.modules(), *hidden_modules(model)]]


def restore(saved: list[tuple[nn.Module, dict, dict, dict]]) -> None:
    for m, attrs, params, buffers in saved:
        vars(m).clear()
        vars(m).update(attrs)
        restore_tensors(m, params, buffers)
