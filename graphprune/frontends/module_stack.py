"""The nn.Module call stack while a forward is recorded (frontends/torch_record.py), as torch.export's
``nn_module_stack`` spells it: each recorded node's module path and type, and the module a data read stopped in."""
from __future__ import annotations

from typing import Any

import torch


def _typename(mod: torch.nn.Module) -> str:
    cls = type(mod)
    return f"{cls.__module__}.{cls.__qualname__}"


class ModuleStack:
    """The nn.Module call stack while recording, as export's ``nn_module_stack`` spells it."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.paths: dict[int, str] = {}
        for path, mod in model.named_modules(remove_duplicate=False):
            self.paths.setdefault(id(mod), path)
        self.stack: list[tuple[str, tuple[str, str]]] = [("L__self__", ("", _typename(model)))]
        self.current: dict = dict(self.stack)
        self.hidden: dict[int, torch.nn.Module] = {}  # modules called that the model does not register

    def push(self, mod: torch.nn.Module, *_: Any) -> None:
        path = self.paths.get(id(mod))
        if path is None:
            self.hidden.setdefault(id(mod), mod)
        if path is not None and path != "":
            self.stack.append((f"L__self__{path}", (path, _typename(mod))))
            self.current = dict(self.stack)

    def pop(self, mod: torch.nn.Module, *_: Any) -> None:
        path = self.paths.get(id(mod))
        if path is not None and path != "" and len(self.stack) > 1 and self.stack[-1][1][0] == path:
            self.stack.pop()
            self.current = dict(self.stack)
