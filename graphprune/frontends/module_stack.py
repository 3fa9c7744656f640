"""Where a recorded node comes from (frontends/torch_record.py): the nn.Module call stack, as torch.export's
``nn_module_stack`` spells it (each node's module path and type, the module a data read stopped in), and the line
of the model's code that ran it."""
from __future__ import annotations

import os
import sys
from typing import Any

import torch

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_TORCH_MODULES_DIR = os.path.join(_TORCH_DIR, "nn", "modules") + os.sep
_OWN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # graphprune's: no user's line


def user_frame(torch_layers: bool = True) -> str | None:
    """'File "...", line N, in f' of the innermost frame in the model's code, as export's; ``torch_layers``: torch's
    layers count as the model's (a data read inside one), else the line that called into torch is named (a module
    recorded whole: not torch's call machinery)."""
    f = sys._getframe(1)
    while f is not None:
        name = f.f_code.co_filename
        torch_code = name.startswith(_TORCH_DIR) and not (torch_layers and name.startswith(_TORCH_MODULES_DIR))
        if not torch_code and not name.startswith(_OWN_DIR):
            return f'File "{name}", line {f.f_lineno}, in {f.f_code.co_name}'
        f = f.f_back
    return None


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
