"""graphprune: a graph-level structured pruning compiler.

Trace a model, solve its coupled channel spaces into groups, rank and plan, and
rewrite it into a smaller dense model that the exactness oracle can check.

The API below loads on first use, so the command line answers ``--help`` without
importing torch; importing ``graphprune.hf`` or calling any function loads the
pruning path whole (tracing, rules, planning), not piece by piece inside a prune.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import BudgetWarning, GraphpruneError, PlanError, PruneWarning, RewriteError, TraceError

# public name -> the submodule that defines it
_EXPORTS = {
    "trace": "api.torch_models", "load_onnx": "api.torch_models", "plan": "api.torch_models",
    "prune": "api.torch_models", "OracleReport": "api.torch_models", "masked_original": "api.torch_models",
    "verify": "api.torch_models",
    "load_pruned_module": "io.module_checkpoint", "save_pruned_module": "io.module_checkpoint",
    "ExportReport": "io.onnx_export", "export_onnx": "io.onnx_export",
    "GgufReport": "io.gguf_export", "export_gguf": "io.gguf_export",
    "DependencyGraph": "graph", "Group": "graph", "Member": "graph",
    "CRITERIA": "importance", "register_importance": "importance",
    "count_macs": "api.counts", "count_params": "api.counts",
    "OnnxPruneReport": "api.onnx_models", "prune_onnx": "api.onnx_models", "verify_onnx": "api.onnx_models",
    "PrunePlan": "planning.plan", "PruneReport": "report.prune_report", "prune_iterative": "api.schedule",
    "RecoverError": "api.recover", "RecoverResult": "api.recover_result", "recover": "api.recover",
    "load_pruned": "hf", "save_pruned": "hf", "PruneOptions": "options",
    "Reason": "reasons",
}

if TYPE_CHECKING:  # what the names are, for editors and type checkers
    from . import hf
    from .api.counts import count_macs, count_params
    from .api.onnx_models import OnnxPruneReport, prune_onnx, verify_onnx
    from .api.recover import RecoverError, recover
    from .api.recover_result import RecoverResult
    from .api.schedule import prune_iterative
    from .api.torch_models import OracleReport, load_onnx, masked_original, plan, prune, trace, verify
    from .graph import DependencyGraph, Group, Member
    from .hf import load_pruned, save_pruned
    from .importance import CRITERIA, register_importance
    from .io.gguf_export import GgufReport, export_gguf
    from .io.module_checkpoint import load_pruned_module, save_pruned_module
    from .io.onnx_export import ExportReport, export_onnx
    from .options import PruneOptions
    from .planning.plan import PrunePlan
    from .reasons import Reason
    from .report.prune_report import PruneReport


def __getattr__(name: str) -> Any:
    """Load the module defining a public name on first use (PEP 562)."""
    if name == "hf":
        return importlib.import_module(".hf", __name__)
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module 'graphprune' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{where}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | {"hf"})


__all__ = ["trace", "load_onnx", "prune_onnx", "verify_onnx", "OnnxPruneReport", "plan", "prune", "verify",
           "masked_original", "DependencyGraph", "Group", "Member", "PrunePlan", "export_onnx", "ExportReport",
           "export_gguf", "GgufReport",
           "PruneReport", "OracleReport", "count_macs", "count_params", "GraphpruneError", "CRITERIA",
           "register_importance", "PlanError", "RewriteError", "TraceError", "hf", "load_pruned", "save_pruned",
           "load_pruned_module", "save_pruned_module", "prune_iterative", "recover", "RecoverResult",
           "RecoverError", "PruneOptions", "Reason", "PruneWarning", "BudgetWarning"]
__version__ = "0.1.0"
