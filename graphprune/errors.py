"""Exceptions graphprune raises. Each message says what, where and how to fix."""
from __future__ import annotations

import os
import sys
import warnings
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from .reasons import Reason


class GraphpruneError(Exception):
    """Base class for every error graphprune raises on purpose.

    ``reasons`` holds the structured records (graphprune.reasons.Reason) behind a refusal:
    the frozen groups' or the unknown op's, for code to read instead of the message.
    """

    def __init__(self, *args: object, reasons: Iterable[Reason] = ()) -> None:
        super().__init__(*args)
        self.reasons = list(reasons)


class TraceError(GraphpruneError):
    """The model could not be traced or lowered."""


class PlanError(GraphpruneError):
    """Pruning options are invalid (ratio out of range, unknown names...)."""


class RewriteError(GraphpruneError):
    """The rewritten model does not have the shapes the plan requires. ``modules``: where known, the
    modules whose forward spells a changed size the rewrite cannot reach (what ``ignore=`` would keep whole);
    ``groups``: where known, the pruned groups whose sizes the failing line spells, and ``site`` that line's
    node (a default call freezes those groups and plans again: graphprune/planning/unreached.py)."""

    def __init__(self, *args: object, reasons: Iterable[Reason] = (), modules: Iterable[str] = (),
                 groups: Iterable[int] = (), site: str = "", detail: str = "") -> None:
        super().__init__(*args, reasons=reasons)
        self.modules = list(modules)
        self.groups = list(groups)
        self.site = site
        self.detail = detail  # why those groups are kept whole, where it is not a size the forward spells


class PruneWarning(UserWarning):
    """A prune that did less than asked: a ratio that rounds to nothing, an empty plan."""


class BudgetWarning(PruneWarning):
    """A plan that lands more than 2% under its MACs or parameter budget: more pruning than asked.
    Its own class so that code pruning a model piece by piece (hf/stream.py) can leave it to the whole."""


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str, category: type[PruneWarning] = PruneWarning) -> None:
    """A PruneWarning located at the caller's own line, the first frame outside graphprune, however
    deep inside it the prune found the problem (a fixed stacklevel pointed into graphprune's wrappers)."""
    frame, level = sys._getframe(1), 2  # stacklevel 2 is warn's caller, sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
