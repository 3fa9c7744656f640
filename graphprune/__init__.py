"""graphprune: a graph-level structured pruning compiler.

Trace a model, solve its coupled channel spaces into groups, rank and plan, and
rewrite it into a smaller dense model that the exactness oracle can check.
"""
from __future__ import annotations

from .api import load_onnx, plan, prune, trace
from .checkpoint import load_pruned_module, save_pruned_module
from .export import ExportReport, export_onnx
from .errors import GraphpruneError, PlanError, RewriteError, TraceError
from .graph import DependencyGraph, Group, Member
from .importance import CRITERIA, register_importance
from .metrics import count_macs, count_params
from .onnx_prune import OnnxPruneReport, prune_onnx, verify_onnx
from .planner import PrunePlan
from .report import PruneReport
from .schedule import prune_iterative
from .verify import OracleReport, masked_original, verify
from . import hf  # transformers support; imports transformers only when used
from .hf import load_pruned, save_pruned
from .rules import load_all as _load_rules

_load_rules()  # the op rules register on import: with the package, not inside the first trace

__all__ = ["trace", "load_onnx", "prune_onnx", "verify_onnx", "OnnxPruneReport", "plan", "prune", "verify", "masked_original", "DependencyGraph", "Group", "Member",
           "PrunePlan", "export_onnx", "ExportReport", "PruneReport", "OracleReport", "count_macs", "count_params", "GraphpruneError", "CRITERIA", "register_importance",
           "PlanError", "RewriteError", "TraceError", "hf", "load_pruned", "save_pruned", "load_pruned_module",
           "save_pruned_module", "prune_iterative"]
__version__ = "0.1.0"
