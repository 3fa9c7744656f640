"""A ``forward(**kwargs)`` seen by torch.export as a forward of named parameters.

torch.export keys ``dynamic_shapes`` by the forward's parameters; a var-keyword forward (a thin wrapper around a
diffusers model, ``forward(self, **k)``) has one, ``k``, and torch 2.13 fails on a nested spec for it ("Must provide
a tree_name"), so the file was written with a fixed batch. The view shares the model's modules, parameters and
buffers (the same names in the file) and declares the inputs given by name as its own parameters.
"""
from __future__ import annotations

import inspect

from torch import nn

from ..util.torch_compat import share_registries


class _KeywordView(nn.Module):
    def __init__(self, model: nn.Module, signature: inspect.Signature) -> None:
        super().__init__()
        share_registries(self, model)  # not registered under a prefix: the exported names stay the model's own
        self.training = model.training
        inner = model.forward

        def forward(*args, **kwargs):
            return inner(*args, **kwargs)

        forward.__signature__ = signature
        self.__dict__["forward"] = forward


def keyword_view(model: nn.Module, args: tuple, kwargs: dict) -> nn.Module:
    """``model``, or where its forward takes ``**kwargs`` that hold some of ``kwargs``, a view whose forward names
    them (a forward that also takes ``*args`` is left as it is: torch.export handles that one)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return model
    kinds = {p.kind for p in params.values()}
    if inspect.Parameter.VAR_KEYWORD not in kinds or inspect.Parameter.VAR_POSITIONAL in kinds:
        return model
    named = [p for p in params.values() if p.kind != p.VAR_KEYWORD]
    extra = [k for k in kwargs if k not in params]
    if not extra:
        return model
    keyword = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY) for k in extra]
    return _KeywordView(model, inspect.Signature(named + keyword))
