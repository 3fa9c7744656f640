"""The modules a model runs in sequence: children of an ``nn.Sequential`` / ``nn.ModuleList``
(a CNN's blocks, a transformer's layers). recover's feature matching and block stage, and the
kept-channel map a prune leaves on a module, all read blocks this way."""
from __future__ import annotations

import torch


def container_children(model: torch.nn.Module) -> list[str]:
    """Paths of every child of a Sequential or ModuleList in ``model``, in ``named_modules`` order."""
    containers = (torch.nn.Sequential, torch.nn.ModuleList)
    return [f"{n}.{c}" if n else c for n, m in model.named_modules() if isinstance(m, containers)
            for c, _ in m.named_children()]
