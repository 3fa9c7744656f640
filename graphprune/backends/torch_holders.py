"""Layers a model keeps outside its module registry.

nbeats-pytorch keeps its layers in a plain Python list and registers their weights through an
``nn.ParameterList``: the rewrite replaces each tensor at its registered path (``params.3``), while the
``nn.Linear`` the forward calls still holds the old one. The pruned model then reported fewer parameters and
computed what the original did (a silent no-op; the oracle failed it). Such modules are found here, through
the plain lists, tuples and dicts of registered modules' attributes, so that they get the new tensors too.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from ..util.torch_compat import ConvNd, NormBase, own_buffers, own_params, set_tensor

_TORCH_STATE = frozenset(vars(nn.Module()))  # nn.Module's own bookkeeping (registries, hooks): not the model's
_DEPTH = 3  # nested containers searched: [[layer, ...], ...] is two


def hidden_modules(model: nn.Module) -> list[nn.Module]:
    """Modules reachable from ``model`` through plain containers in its modules' attributes, and their
    children, that ``model.modules()`` does not list; in the order found."""
    seen = {id(m) for m in model.modules()}
    out: list[nn.Module] = []

    def visit(obj: Any, depth: int) -> None:
        if isinstance(obj, nn.Module):
            for m in obj.modules():
                if id(m) not in seen:
                    seen.add(id(m))
                    out.append(m)
                    scan(m)
        elif depth < _DEPTH and isinstance(obj, (list, tuple)):
            for item in obj:
                visit(item, depth + 1)
        elif depth < _DEPTH and isinstance(obj, dict):
            for item in obj.values():
                visit(item, depth + 1)

    def scan(m: nn.Module) -> None:
        for key, value in vars(m).items():
            if key not in _TORCH_STATE and isinstance(value, (list, tuple, dict)):
                visit(value, 0)

    for m in list(model.modules()):
        scan(m)
    return out


def holders(modules: Iterable[nn.Module]) -> dict[int, list[tuple[nn.Module, str]]]:
    """id(tensor) -> every (module, name) of ``modules`` holding it as a parameter or buffer."""
    out: dict[int, list[tuple[nn.Module, str]]] = {}
    for m in modules:
        for name, t in [*own_params(m).items(), *own_buffers(m).items()]:
            if t is not None:
                out.setdefault(id(t), []).append((m, name))
    return out


def holds_model_tensors(model: nn.Module) -> bool:
    """Whether a hidden module holds a tensor the model registers (what the rewrite must reach)."""
    held = holders(hidden_modules(model))
    return any(id(t) in held for t in [*model.parameters(), *model.buffers()])


def unreached_holders(model: nn.Module, hidden: list[nn.Module], traced: tuple[str, ...]) -> list[str]:
    """Of ``traced`` (registered paths of tensors that modules the forward called outside the registry hold: the
    recording's ``Trace.hidden``), those none of ``hidden`` (:func:`hidden_modules`) holds: layers kept in a
    ``deque`` or a namespace, which the rewrite would leave holding the old tensors."""
    if not traced:
        return []
    held, tensors = holders(hidden), dict(model.named_parameters(remove_duplicate=False))
    tensors.update(model.named_buffers(remove_duplicate=False))
    return [p for p in traced if p in tensors and id(tensors[p]) not in held]


def rebind_hidden(hidden: list[nn.Module], new_of: dict[int, torch.Tensor]) -> None:
    """Give every hidden module the new tensor for each old one it holds (``new_of``: id(old) -> new), and
    the layer sizes torch's own layers keep beside their weights."""
    for m in hidden:
        got = False
        for name, t in [*own_params(m).items(), *own_buffers(m).items()]:
            if t is not None and id(t) in new_of:
                set_tensor(m, name, new_of[id(t)])
                got = True
        if not got:
            continue
        if isinstance(m, nn.Linear):
            m.out_features, m.in_features = m.weight.shape
        elif isinstance(m, ConvNd):
            w = m.weight  # a grouped conv keeps its groups: the rewrite's proof refuses one that no longer fits
            channels = (w.shape[1] * m.groups, w.shape[0]) if not m.transposed else (w.shape[0], w.shape[1] * m.groups)
            m.in_channels, m.out_channels = channels
        elif isinstance(m, NormBase) and m.weight is not None:
            m.num_features = m.weight.shape[0]
