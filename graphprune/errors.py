"""Exceptions graphprune raises. Each message says what, where and how to fix."""
from __future__ import annotations


class GraphpruneError(Exception):
    """Base class for every error graphprune raises on purpose."""


class TraceError(GraphpruneError):
    """The model could not be traced or lowered."""


class PlanError(GraphpruneError):
    """Pruning options are invalid (ratio out of range, unknown names...)."""


class RewriteError(GraphpruneError):
    """The rewritten model does not have the shapes the plan requires."""


class PruneWarning(UserWarning):
    """A prune that did less than asked: a ratio that rounds to nothing, an empty plan."""
