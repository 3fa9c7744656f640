"""A user's ``package.module:factory``: imported from the current folder, called, checked."""
from __future__ import annotations

import importlib
import os
import sys

import torch

from ..errors import GraphpruneError


def call_factory(spec: str):
    """(module in eval mode, example args, example kwargs) from ``package.module:factory``."""
    mod_name, _, fn_name = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # the user's own package, run from its folder
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise GraphpruneError(f"cannot import '{mod_name}' for MODEL '{spec}': {exc}") from exc
    fn = module
    for part in fn_name.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise GraphpruneError(f"'{mod_name}' has no '{fn_name}' (MODEL '{spec}' is package.module:factory)")
    try:
        made = fn() if callable(fn) and not isinstance(fn, torch.nn.Module) else fn
    except Exception as exc:  # the user's code: report it in one line
        raise GraphpruneError(f"factory '{spec}' raised {type(exc).__name__}: {exc}") from exc
    args: tuple = ()
    kwargs: dict = {}
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], torch.nn.Module):
        made, ex = made
        if isinstance(ex, dict):
            kwargs = dict(ex)
        else:
            args = tuple(ex) if isinstance(ex, (tuple, list)) else (ex,)
    if not isinstance(made, torch.nn.Module):
        raise GraphpruneError(f"factory '{spec}' returned {type(made).__name__}; it must return a torch.nn.Module or "
                              "(module, example_args)")
    return made.eval(), args, kwargs
