"""Coupling rules, one op family per module. Importing a module registers its rules."""
from __future__ import annotations

import importlib

_FAMILIES = ("elementwise", "factory", "shape", "linear", "conv", "norm", "reduce", "pool", "embedding",
             "scatter", "attention", "reorder", "spectral", "onnx_shape", "recurrent", "control")
_loaded = False


def load_all() -> None:
    """Import every rule family once (registration happens at import)."""
    global _loaded
    if not _loaded:
        for fam in _FAMILIES:
            importlib.import_module(f"{__name__}.{fam}")
        _loaded = True
