"""graphprune: a graph-level structured pruning compiler.

Trace a model, solve its coupled channel spaces into groups, rank and plan, and
rewrite it into a smaller dense model that the exactness oracle can check.

The API below loads on first use, so the command line answers ``--help`` without
importing torch; importing ``graphprune.hf`` or calling any function loads the
pruning path whole (tracing, rules, planning), not piece by piece inside a prune.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from .errors import GraphpruneError, PlanError, RewriteError, TraceError

# public name -> the submodule that defines it
_EXPORTS = {
    "trace": "api", "load_onnx": "api", "plan": "api", "prune": "api",
    "load_pruned_module": "checkpoint", "save_pruned_module": "checkpoint",
    "ExportReport": "export", "export_onnx": "export",
    "DependencyGraph": "graph", "Group": "graph", "Member": "graph",
    "CRITERIA": "importance", "register_importance": "importance",
    "count_macs": "metrics", "count_params": "metrics",
    "OnnxPruneReport": "onnx_prune", "prune_onnx": "onnx_prune", "verify_onnx": "onnx_prune",
    "PrunePlan": "planner", "PruneReport": "report", "prune_iterative": "schedule",
    "RecoverError": "recover", "RecoverResult": "recover", "recover": "recover",
    "OracleReport": "verify", "masked_original": "verify", "verify": "verify",
    "load_pruned": "hf", "save_pruned": "hf",
}

if TYPE_CHECKING:  # what the names are, for editors and type checkers
    from . import hf
    from .api import load_onnx, plan, prune, trace
    from .checkpoint import load_pruned_module, save_pruned_module
    from .export import ExportReport, export_onnx
    from .graph import DependencyGraph, Group, Member
    from .hf import load_pruned, save_pruned
    from .importance import CRITERIA, register_importance
    from .metrics import count_macs, count_params
    from .onnx_prune import OnnxPruneReport, prune_onnx, verify_onnx
    from .planner import PrunePlan
    from .recover import RecoverError, RecoverResult, recover
    from .report import PruneReport
    from .schedule import prune_iterative
    from .verify import OracleReport, masked_original, verify


class _Package(types.ModuleType):
    """The package, loading its API on first use. ``graphprune.verify`` is a function that
    shares its name with the module defining it: importing that module must not put the
    module in the function's place (Python sets a package attribute for each submodule)."""

    def __getattr__(self, name: str) -> Any:
        if name == "hf":
            return importlib.import_module(".hf", __name__)
        where = _EXPORTS.get(name)
        if where is None:
            raise AttributeError(f"module 'graphprune' has no attribute '{name}'")
        value = getattr(importlib.import_module(f".{where}", __name__), name)
        setattr(self, name, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return  # a submodule named like a public function (verify): the function stays
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(_EXPORTS) | {"hf"})


sys.modules[__name__].__class__ = _Package

__all__ = ["trace", "load_onnx", "prune_onnx", "verify_onnx", "OnnxPruneReport", "plan", "prune", "verify",
           "masked_original", "DependencyGraph", "Group", "Member", "PrunePlan", "export_onnx", "ExportReport",
           "PruneReport", "OracleReport", "count_macs", "count_params", "GraphpruneError", "CRITERIA",
           "register_importance", "PlanError", "RewriteError", "TraceError", "hf", "load_pruned", "save_pruned",
           "load_pruned_module", "save_pruned_module", "prune_iterative", "recover", "RecoverResult",
           "RecoverError"]
__version__ = "0.1.0"
